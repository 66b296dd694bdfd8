"""Test-session settings shared by every test file."""

import os
import sys
import tempfile

import pytest

# The process start every entry point uses (robust_gen.launch): idle OpenMP threads sleep instead of spinning; on
# a small, shared CPU a spinning pool makes tiny tensor ops (most of this suite) up to 30x slower. Before torch
# is imported. The torch-family check has its own tests (tests/test_environment.py).
from robust_gen.launch import start_process

start_process(check_torch=False)
# No test may reach a model hub; the offline paths are what the suite checks.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The shared cache (corpus, mels, speaker embeddings, trained autoencoders) is per test session: a cache entry
# left by an earlier session or by the user's own runs must not decide what a test exercises.
os.environ["ROBUST_GEN_CACHE"] = tempfile.mkdtemp(prefix="robust_gen_test_cache_")


def _make_speechbrain_lazy_modules_introspectable() -> None:
    """speechbrain's LazyModule raises ImportError, not AttributeError, when ``__file__`` of an optional integration
    (k2) that is not installed is looked up. hypothesis reads ``__file__`` of every module in ``sys.modules``, so
    once speechbrain is imported every later property test would crash. Make dunder lookups fail the normal way."""
    importutils = sys.modules.get("speechbrain.utils.importutils")
    if importutils is None or getattr(importutils.LazyModule, "_robust_gen_patched", False):
        return
    original = importutils.LazyModule.__getattr__

    def __getattr__(self, attr):
        try:
            return original(self, attr)
        except ImportError as error:
            if attr.startswith("__"):
                raise AttributeError(attr) from error
            raise

    importutils.LazyModule.__getattr__ = __getattr__
    importutils.LazyModule._robust_gen_patched = True


def pytest_runtest_setup(item):
    _make_speechbrain_lazy_modules_introspectable()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    gain nothing from a second thread, and on a small shared machine synchronisation makes them several times
    slower; results do not change. The previous setting comes back after the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_pipeline_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "tests" / "helpers" / "tiny_pipeline.py"
    spec = importlib.util.spec_from_file_location("tiny_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_pipeline_builder():
    """``build(folder, prediction_type="epsilon")``: save a tiny StableDiffusionPipeline (tests/helpers)."""
    return _tiny_pipeline_module().build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_pipeline_builder):
    """A tiny StableDiffusionPipeline folder (U-Net, VAE, CLIP text model, generated tokenizer), saved once."""
    return tiny_pipeline_builder(tmp_path_factory.mktemp("sd") / "tiny_sd")


def _free_port() -> int:
    """A TCP port nobody listens on now: fixed rendezvous ports collide with other runs of the suite."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def run_child():
    """``run_child(args, cwd)``: run a child process on one thread each, failing with its stderr when it fails."""
    import subprocess

    def run(args, cwd):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done

    return run


@pytest.fixture(scope="session")
def torchrun_two(run_child):
    """``torchrun_two(args, cwd)``: ``torchrun --nproc_per_node 2`` on a free rendezvous port (skips without it)."""
    import shutil
    from pathlib import Path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not installed")

    def run(args, cwd):
        return run_child([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), *args], cwd)

    return run
