"""load_pipeline("owner/name"): what is fetched from the Hub, and the errors around it.

No network here: a stand-in ``huggingface_hub`` module (its ``list_repo_files``,
``hf_hub_download`` and ``snapshot_download``, with huggingface_hub's ``allow_patterns``
fnmatch rule) serves a copy of ``tests/data/tiny_sd1`` laid out as a Hub repo with what
real repos also carry: an fp16 variant, a pickled ``.bin``, a ``safety_checker``, a
README, and the text encoder sharded behind a ``model.safetensors.index.json``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import sys
import types

import chex
import pytest

from diffjax.networks.safetensors_io import read_safetensors, write_safetensors
from diffjax.stable_diffusion import hub
from diffjax.stable_diffusion import pipeline as P

DATA = os.path.join(os.path.dirname(__file__), "data")
REPO_ID = "someone/tiny-sd1"


def _files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                  for d, _, fs in os.walk(root) for f in fs)


def _make_repo(root: str) -> str:
    shutil.copytree(os.path.join(DATA, "tiny_sd1"), root)
    unet = os.path.join(root, "unet")
    shutil.copy(os.path.join(unet, "diffusion_pytorch_model.safetensors"),
                os.path.join(unet, "diffusion_pytorch_model.fp16.safetensors"))
    with open(os.path.join(root, "vae", "diffusion_pytorch_model.bin"), "wb") as f:
        f.write(b"pickled")
    os.makedirs(os.path.join(root, "safety_checker"))
    for name in ("config.json", "model.safetensors"):
        with open(os.path.join(root, "safety_checker", name), "w") as f:
            f.write("{}")
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write("# tiny\n")
    text = os.path.join(root, "text_encoder")
    tensors = read_safetensors(os.path.join(text, "model.safetensors"))
    os.remove(os.path.join(text, "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(os.path.join(text, shard), {k: tensors[k] for k in part})
        weight_map.update(dict.fromkeys(part, shard))
    with open(os.path.join(text, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return root


class FakeHub(types.ModuleType):
    """huggingface_hub's three calls over a local folder; records what was fetched."""

    def __init__(self, repo: str, cache: str):
        super().__init__("huggingface_hub")
        self.repo, self.cache, self.fetched, self.revisions = repo, cache, set(), []

    def _copy(self, rel: str) -> str:
        dst = os.path.join(self.cache, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(os.path.join(self.repo, rel), dst)
        self.fetched.add(rel)
        return dst

    def list_repo_files(self, repo_id, revision=None):
        if repo_id != REPO_ID:
            raise RuntimeError(f"404 Client Error: Repository Not Found for {repo_id}")
        self.revisions.append(revision)
        return _files(self.repo)

    def hf_hub_download(self, repo_id, filename, revision=None, cache_dir=None):
        return self._copy(filename)

    def snapshot_download(self, repo_id, revision=None, cache_dir=None, allow_patterns=None):
        for rel in _files(self.repo):
            if any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                self._copy(rel)
        return self.cache


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    fake = FakeHub(_make_repo(str(tmp_path / "repo")), str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.chdir(tmp_path)  # "someone/tiny-sd1" is no local path here
    return fake


def test_repo_id_loads_the_same_pipeline_fetching_only_what_it_reads(fake_hub):
    pipe = P.load_pipeline(REPO_ID, revision="main")
    local = P.load_pipeline(os.path.join(DATA, "tiny_sd1"))
    chex.assert_trees_all_equal(pipe.unet_params, local.unet_params)
    chex.assert_trees_all_equal(pipe.vae_params, local.vae_params)
    chex.assert_trees_all_equal(pipe.text_params, local.text_params)
    assert pipe.scheduler_config == local.scheduler_config
    assert fake_hub.revisions == ["main"]
    shards = {f"text_encoder/model-0000{i}-of-00002.safetensors" for i in (1, 2)}
    assert shards | {"text_encoder/model.safetensors.index.json",
                     "unet/diffusion_pytorch_model.safetensors",
                     "vae/diffusion_pytorch_model.safetensors", "model_index.json",
                     "tokenizer/vocab.json", "scheduler/scheduler_config.json"} <= fake_hub.fetched
    not_read = {"unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model.bin", "safety_checker/model.safetensors",
                "README.md"}
    assert not fake_hub.fetched & not_read


def test_variant_fetches_its_files_and_names_what_is_missing(fake_hub):
    with pytest.raises(FileNotFoundError, match=r"variant='fp16'"):
        P.load_pipeline(REPO_ID, variant="fp16")  # only the UNet has fp16 files
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fake_hub.fetched
    assert "unet/diffusion_pytorch_model.safetensors" not in fake_hub.fetched


def test_hub_errors_are_clear(fake_hub, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"'someone/other'.*Hub lookup failed"):
        P.load_pipeline("someone/other")
    with pytest.raises(ValueError, match="revision='main' applies to Hub repo ids"):
        P.load_pipeline(os.path.join(DATA, "tiny_sd1"), revision="main")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'diffjax\[hub\]'"):
        P.load_pipeline(REPO_ID)


def test_what_counts_as_a_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.looks_like_repo_id("runwayml/stable-diffusion-v1-5")
    assert not hub.looks_like_repo_id("/models/sd15")  # absolute: a local path
    assert not hub.looks_like_repo_id("a/b/c") and not hub.looks_like_repo_id("sd15")
    assert not hub.looks_like_repo_id("../x")
    os.makedirs("runwayml/stable-diffusion-v1-5")
    assert not hub.looks_like_repo_id("runwayml/stable-diffusion-v1-5")  # exists locally
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        hub.hub_files_to_fetch(["unet/config.json"], None, read_json=None)
