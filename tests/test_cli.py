"""The shared command line: where the persistent compilation cache goes."""

import os
import subprocess
import sys

from helpers import ROOT

from mtssl import cli


def test_compile_cache_defaults_to_jax_variable_then_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_var"))
    assert cli.default_compile_cache() == str(tmp_path / "jax_var")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli.default_compile_cache() == str(tmp_path / "xdg" / "mtssl" / "xla")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.default_compile_cache() == str(tmp_path / "home" / ".cache" / "mtssl" / "xla")


def test_enable_compile_cache_sets_the_folder_and_a_size_limit(tmp_path):
    # In a fresh process without JAX's cache variables, as a user's run starts.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    code = ("import jax; from mtssl import cli; cli.enable_compile_cache(''); "
            "print(jax.config.jax_compilation_cache_dir); "
            f"cli.enable_compile_cache({str(tmp_path)!r}); "
            "print(jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=ROOT).stdout.split("\n")
    assert out[0] == "None"                   # "" leaves the cache off
    # A size limit is what makes JAX lock the cache files across processes.
    assert out[1] == f"{tmp_path} {cli.COMPILE_CACHE_MAX_BYTES}"
