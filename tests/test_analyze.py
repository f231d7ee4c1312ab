"""`analyze` on tiny HF-style checkpoints built here (GPT-2 tied, Pythia untied, sharded, OPT-350m-like, .bin,
BERT/MPNet/sentence-transformers encoders without a head, a bare .safetensors), compared with brute force; --tensor;
the centred statistic; the --series fits and their warnings; bad inputs. The Hub is faked: tests never touch the
network."""
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import widthlab.analyze as A
from widthlab import WidthlabError
from widthlab.cli import main


def rand(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    # a shared offset makes the rows anisotropic, so mean_cos and mean |cos| are far from their random values
    return torch.randn(n, m, generator=g) + 0.5 * torch.randn(1, m, generator=g)


def brute(W: torch.Tensor) -> dict[str, float]:
    Wh = torch.nn.functional.normalize(W.double(), dim=1)
    C = Wh @ Wh.T
    off = ~torch.eye(W.shape[0], dtype=torch.bool)
    Zh = torch.nn.functional.normalize(W.double() - W.double().mean(0), dim=1)  # centred, then normalised
    return {"mean_cos2": C[off].square().mean().item(), "mean_abs_cos": C[off].abs().mean().item(),
            "max_abs_cos": C[off].abs().max().item(), "mean_cos": C[off].mean().item(),
            "mean_cos2_centred": (Zh @ Zh.T)[off].square().mean().item()}


def write_dir(d, tensors: dict, config: dict | None = None, name="model.safetensors"):
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, name))
    if config is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f)
    return str(d)


@pytest.fixture
def gpt2_dir(tmp_path):
    W = rand(300, 16, 0)
    return write_dir(tmp_path / "tiny-gpt2", {"wte.weight": W, "wpe.weight": rand(32, 16, 1),
                                              "h.0.ln_1.weight": torch.ones(16)},
                     {"model_type": "gpt2", "n_embd": 16, "vocab_size": 300}), W


def check_stats(stats: dict, W: torch.Tensor):
    b = brute(W)
    for k in ("mean_cos2", "mean_abs_cos", "max_abs_cos", "mean_cos", "mean_cos2_centred"):
        assert stats[k] == pytest.approx(b[k], rel=1e-9), k
    assert stats["mean_cos2_pairs"] == pytest.approx(b["mean_cos2"], rel=1e-9)  # the paper's method agrees
    assert stats["kappa"] == pytest.approx(W.shape[1] * b["mean_cos2"], rel=1e-9)


def test_gpt2_tied(gpt2_dir, tmp_path, capsys):
    path, W = gpt2_dir
    out = tmp_path / "a.json"
    res = A.analyze(model=path, out=str(out), block_rows=64)
    r = res["models"][0]
    assert (r["tensor"], r["n"], r["m"], r["name"], r["hidden_size"]) == ("wte.weight", 300, 16, "tiny-gpt2", 16)
    check_stats(r["stats"], W)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the file holds what was returned
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # atomic write left no temp file
    printed = capsys.readouterr().out
    assert "tiny-gpt2" in printed and f"{r['stats']['mean_cos2']:.5f}" in printed


def test_pythia_untied_prefers_explicit_head(tmp_path):
    U, E = rand(200, 24, 2), rand(200, 24, 3)
    path = write_dir(tmp_path / "pythia", {"gpt_neox.embed_in.weight": E, "embed_out.weight": U},
                     {"model_type": "gpt_neox", "hidden_size": 24})
    r = A.analyze(model=[path], out=str(tmp_path / "p.json"), pairs=False)["models"][0]
    assert r["tensor"] == "embed_out.weight"
    assert r["stats"]["mean_cos2"] == pytest.approx(brute(U)["mean_cos2"], rel=1e-9)
    assert "mean_abs_cos" not in r["stats"]  # pairs off


def test_gpt2_with_a_saved_head(tmp_path):
    # GPT2LMHeadModel saved with its (tied) head: the head wins over the embedding, and says so
    U = rand(200, 16, 12)
    path = write_dir(tmp_path / "gpt2-head", {"transformer.wte.weight": U, "lm_head.weight": U.clone(),
                                              "transformer.wpe.weight": rand(64, 16, 13)},
                     {"model_type": "gpt2", "n_embd": 16})
    r = A.analyze(model=path, out=str(tmp_path / "h.json"), pairs=False)["models"][0]
    assert (r["tensor"], r["tensor_role"], r["family"]) == ("lm_head.weight", "LM head", "gpt2")
    assert r["stats"]["mean_cos2_centred"] == pytest.approx(brute(U)["mean_cos2_centred"], rel=1e-9)


def test_sharded_index_reads_only_the_heads_shard(tmp_path):
    d = tmp_path / "qwen-sharded"
    U, E = rand(150, 8, 4), rand(150, 8, 5)
    write_dir(d, {"model.embed_tokens.weight": E, "model.norm.weight": torch.ones(8)},
              {"model_type": "qwen2", "hidden_size": 8, "tie_word_embeddings": False},
              name="model-00001-of-00002.safetensors")
    write_dir(d, {"lm_head.weight": U}, name="model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                            "model.norm.weight": "model-00001-of-00002.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    r = A.analyze(model=str(d), out=str(tmp_path / "q.json"), block_rows=40)["models"][0]
    assert r["tensor"] == "lm_head.weight" and r["file"].endswith("model-00002-of-00002.safetensors")
    check_stats(r["stats"], U)
    # the shard holding the head missing → a one-line error naming the shard
    os.remove(d / "model-00002-of-00002.safetensors")
    with pytest.raises(WidthlabError, match="model-00002-of-00002.safetensors"):
        A.analyze(model=str(d), out=str(tmp_path / "q.json"))


def test_opt350m_like_notes_the_head_width(tmp_path):
    W = rand(120, 12, 6)  # head 12 wide, hidden 24 (OPT-350m: 512 vs 1024)
    path = write_dir(tmp_path / "opt", {"model.decoder.embed_tokens.weight": W},
                     {"model_type": "opt", "hidden_size": 24, "word_embed_proj_dim": 12})
    r = A.analyze(model=path, out=str(tmp_path / "o.json"), pairs=False)["models"][0]
    assert r["m"] == 12 and r["hidden_size"] == 24 and "m = 12" in r["note"]


def test_single_file_and_torch_bin(tmp_path):
    W = rand(100, 8, 7)
    f = write_dir(tmp_path / "one", {"lm_head.weight": W, "model.embed_tokens.weight": rand(100, 8, 8)},
                  name="tiny.safetensors")
    r = A.analyze(model=os.path.join(f, "tiny.safetensors"), out=str(tmp_path / "f.json"))["models"][0]
    assert r["tensor"] == "lm_head.weight" and r["name"] == "tiny"
    check_stats(r["stats"], W)
    d = tmp_path / "bin"
    d.mkdir()
    torch.save({"transformer.wte.weight": W.to(torch.bfloat16), "transformer.h.0.x": torch.ones(2)},
               d / "pytorch_model.bin")
    r = A.analyze(model=str(d), out=str(tmp_path / "b.json"), pairs=False)["models"][0]
    assert r["tensor"] == "transformer.wte.weight" and r["dtype"] == "bfloat16"
    assert r["stats"]["mean_cos2"] == pytest.approx(brute(W.to(torch.bfloat16))["mean_cos2"], rel=1e-9)


def test_hub_id_downloads_only_config_index_and_head_shard(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    repo = tmp_path / "hub"
    U = rand(90, 8, 9)
    write_dir(repo, {"embed_out.weight": U}, {"hidden_size": 8}, name="model-00002-of-00002.safetensors")
    write_dir(repo, {"gpt_neox.embed_in.weight": rand(90, 8, 10)}, name="model-00001-of-00002.safetensors")
    (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "gpt_neox.embed_in.weight": "model-00001-of-00002.safetensors",
        "embed_out.weight": "model-00002-of-00002.safetensors"}}))
    fetched = []

    def fake_download(repo_id, filename, **kw):
        assert repo_id == "Org/tiny-pythia"
        fetched.append(filename)
        if not (repo / filename).exists():
            raise EntryNotFoundError(filename)
        return str(repo / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    res = A.analyze(model="Org/tiny-pythia", out=str(tmp_path / "h.json"), pairs=False)
    r = res["models"][0]
    assert r["name"] == "Org--tiny-pythia" and r["tensor"] == "embed_out.weight"
    assert fetched == ["config.json", "model.safetensors.index.json", "model-00002-of-00002.safetensors"]
    assert r["stats"]["mean_cos2"] == pytest.approx(brute(U)["mean_cos2"], rel=1e-9)
    # a repo with no weights files at all
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **kw: (_ for _ in ()).throw(EntryNotFoundError(filename)))
    with pytest.raises(WidthlabError, match="found no weights for 'Org/empty'"):
        A.analyze(model="Org/empty", out=str(tmp_path / "e.json"))
    # an index with no head: the names it lists are the candidates (shapes unknown without the shards)
    (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "gpt_neox.embed_in.weight": "model-00001-of-00002.safetensors", "x.bias": "model-00001-of-00002.safetensors"}}))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(WidthlabError, match=r"pass --tensor NAME .*: gpt_neox\.embed_in\.weight \(shape \?\)$"):
        A.analyze(model="Org/tiny-pythia", out=str(tmp_path / "e.json"))


def ols_t(ms, ys, t975):
    """Slope and 95 % t interval by hand (numpy): SE = sqrt(SSR/(N−2) / Sxx)."""
    x, y = np.log(ms), np.log(ys)
    slope, icpt = np.polyfit(x, y, 1)
    resid = y - (slope * x + icpt)
    se = math.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean())))
    return slope, icpt, [slope - t975 * se, slope + t975 * se]


def gpt2_like(d, m, seed, shared=0.0, n=600):
    """A GPT-2-like folder (tied wte, config with model_type) whose rows may share one direction of size `shared`."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(m, generator=g)
    W = shared * u / u.norm() + torch.randn(n, m, generator=g) / math.sqrt(m)
    return write_dir(d, {"wte.weight": W, "wpe.weight": rand(32, m, seed + 1)},
                     {"model_type": "gpt2", "n_embd": m, "vocab_size": n}), W


def test_series_fit_on_three_widths(tmp_path, capsys):
    paths, ms, Ws = [], [8, 16, 32], []
    for i, m in enumerate(ms):  # isotropic rows: mean cos² ≈ 1/m, one family, one vocabulary
        p, W = gpt2_like(tmp_path / f"w{m}", m, 20 + i)
        paths.append(p)
        Ws.append(W)
    out = tmp_path / "s.json"
    res = A.analyze(model=paths, series=True, out=str(out), pairs=False)
    fit = res["series"]
    for stat in ("mean_cos2", "mean_cos2_centred"):
        t1 = 12.706204736174694  # t_{0.975} with 1 dof (tables: 12.706)
        slope, icpt, ci = ols_t(ms, [brute(W)[stat] for W in Ws], t1)
        f = fit["fits"][stat]
        assert f["slope"] == pytest.approx(slope, rel=1e-9) and f["intercept"] == pytest.approx(icpt, rel=1e-9)
        assert f["slope_ci95"] == pytest.approx(ci, rel=1e-9) and (f["n"], f["dof"]) == (3, 1)
        assert abs(f["slope"] + 1) < 0.05  # random rows: the 1/m law itself
    assert fit["guide_slope"] == -1.0 and fit["comparable"] and fit["warnings"] == []
    assert A.series_warnings([{**r, "tensor_role": "LM head"} if i else r for i, r in enumerate(res["models"])]) == []
    assert json.loads(out.read_text())["series"]["n_models"] == 3
    printed = capsys.readouterr().out
    assert "N = 3 models" in printed and "log mean_cos2_centred" in printed and "not the paper's" not in printed
    with pytest.raises(WidthlabError, match="at least 2 different widths"):
        A.analyze(model=paths[:1], series=True, out=str(tmp_path / "x.json"), pairs=False)


def test_centred_statistic_sees_packing_under_a_shared_direction(tmp_path):
    # rows = 3u + isotropic: raw mean cos² ≈ 0.81 at every width (slope ≈ 0), centred ≈ 1/m (slope ≈ −1), as
    # in pretrained heads whose rows share one dominant direction
    ms, paths, Ws = [8, 16, 32, 64], [], []
    for i, m in enumerate(ms):
        p, W = gpt2_like(tmp_path / f"c{m}", m, 40 + i, shared=3.0)
        paths.append(p)
        Ws.append(W)
    res = A.analyze(model=paths, series=True, out=str(tmp_path / "c.json"), pairs=False)
    for r, W in zip(res["models"], Ws):
        b = brute(W)
        assert r["stats"]["mean_cos2"] == pytest.approx(b["mean_cos2"], rel=1e-9) and b["mean_cos2"] > 0.75
        assert r["stats"]["mean_cos2_centred"] == pytest.approx(b["mean_cos2_centred"], rel=1e-9)
        assert abs(r["m"] * b["mean_cos2_centred"] - 1) < 0.1
    raw, cen = res["series"]["fits"]["mean_cos2"], res["series"]["fits"]["mean_cos2_centred"]
    t2 = 4.302652729749462  # t_{0.975} with 2 dof (tables: 4.303)
    for stat, f in (("mean_cos2", raw), ("mean_cos2_centred", cen)):
        assert f["slope_ci95"] == pytest.approx(ols_t(ms, [brute(W)[stat] for W in Ws], t2)[2], rel=1e-9)
    assert abs(raw["slope"]) < 0.1 and raw["slope_ci95"][0] > -1  # the raw slope misses the 1/m law ...
    assert abs(cen["slope"] + 1) < 0.1 and cen["slope_ci95"][0] < -1 < cen["slope_ci95"][1]  # ... centred finds it


def test_series_says_when_the_fit_is_not_the_papers(tmp_path, capsys):
    g, _ = gpt2_like(tmp_path / "g16", 16, 50)
    bert = write_dir(tmp_path / "bert32", {"embeddings.word_embeddings.weight": rand(250, 32, 51)},
                     {"model_type": "bert", "hidden_size": 32})
    bare = write_dir(tmp_path / "bare", {"lm_head.weight": rand(300, 64, 52)}, name="bare64.safetensors")
    res = A.analyze(model=[g, bert, os.path.join(bare, "bare64.safetensors")], series=True,
                    out=str(tmp_path / "mix.json"), pairs=False)
    fit = res["series"]
    assert not fit["comparable"] and fit["n"] == [600, 250, 300] and fit["families"] == ["gpt2", "bert", None]
    text = " | ".join(fit["warnings"])
    assert "vocabulary sizes differ (n = 250, 300, 600)" in text and "families differ (bert, gpt2)" in text
    assert "family unknown for bare64" in text and "matrices differ in kind (LM head, masked-LM decoder)" in text
    assert "masked-LM decoder: not what the paper measured" in text
    assert fit["fits"]["mean_cos2"]["n"] == 3 and fit["fits"]["mean_cos2_centred"]["slope_ci95"] is not None
    printed = capsys.readouterr().out
    assert printed.count("not the paper's fit:") == 5
    assert json.loads((tmp_path / "mix.json").read_text())["series"]["warnings"] == fit["warnings"]


@pytest.mark.parametrize("prefix, family", [("", "bert"), ("", "mpnet"), ("bert.", "bert")])
def test_encoder_without_head_uses_word_embeddings(tmp_path, capsys, prefix, family):
    # a sentence-transformers MiniLM/MPNet folder (no prefix, no head) or a HF BertModel (bert. prefix)
    W = rand(300, 16, 60)
    path = write_dir(tmp_path / f"{family}-enc", {
        f"{prefix}embeddings.word_embeddings.weight": W,
        f"{prefix}embeddings.position_embeddings.weight": rand(512, 16, 61),
        f"{prefix}embeddings.token_type_embeddings.weight": rand(2, 16, 62),
        f"{prefix}encoder.layer.0.attention.self.query.weight": rand(16, 16, 63),
        f"{prefix}pooler.dense.weight": rand(16, 16, 64)}, {"model_type": family, "hidden_size": 16})
    r = A.analyze(model=path, out=str(tmp_path / "e.json"), block_rows=64)["models"][0]
    assert r["tensor"] == f"{prefix}embeddings.word_embeddings.weight" and r["family"] == family
    assert "MLM decoder is tied" in r["tensor_role"] and (r["n"], r["m"]) == (300, 16)
    check_stats(r["stats"], W)
    assert f"tensor ({family}-enc): {prefix}embeddings.word_embeddings.weight" in capsys.readouterr().out


def test_saved_mlm_decoder_is_preferred(tmp_path):
    W = rand(120, 8, 65)
    d = tmp_path / "bert-mlm"
    d.mkdir()
    torch.save({"bert.embeddings.word_embeddings.weight": W, "cls.predictions.decoder.weight": W.clone(),
                "cls.predictions.bias": torch.zeros(120)}, d / "pytorch_model.bin")
    r = A.analyze(model=str(d), out=str(tmp_path / "m.json"), pairs=False)["models"][0]
    assert r["tensor"] == "cls.predictions.decoder.weight" and r["tensor_role"].startswith("MLM decoder")


def test_tensor_option_reads_any_matrix(gpt2_dir, tmp_path, capsys):
    path, W = gpt2_dir
    P = load_file(os.path.join(path, "model.safetensors"))["wpe.weight"]
    r = A.analyze(model=path, tensor="wpe.weight", out=str(tmp_path / "t.json"))["models"][0]
    assert (r["tensor"], r["tensor_role"], r["n"], r["m"]) == ("wpe.weight", "chosen with --tensor", 32, 16)
    assert "note" not in r  # the head-width note is about heads only
    check_stats(r["stats"], P)
    main(["analyze", "--model", path, "--tensor", "wte.weight", "--pairs", "false", "--out", str(tmp_path / "c.json")])
    saved = json.loads((tmp_path / "c.json").read_text())["models"][0]
    assert saved["tensor"] == "wte.weight" and saved["stats"]["mean_cos2"] == pytest.approx(brute(W)["mean_cos2"])
    capsys.readouterr()
    # an unknown name, or a 1-D tensor: the error lists the 2-D tensors, biggest first, with shapes
    with pytest.raises(WidthlabError, match=r"no tensor 'nope' .*: wte\.weight \(300×16\), wpe\.weight \(32×16\)$"):
        A.analyze(model=path, tensor="nope", out=str(tmp_path / "x.json"))
    with pytest.raises(WidthlabError, match=r"h\.0\.ln_1\.weight .* not a matrix.*wte\.weight \(300×16\)"):
        A.analyze(model=path, tensor="h.0.ln_1.weight", out=str(tmp_path / "x.json"))
    # the same tensor across models: a series, flagged as not the paper's statistic
    other, _ = gpt2_like(tmp_path / "g8", 8, 70)
    fit = A.analyze(model=[path, other], tensor="wpe.weight", series=True, pairs=False,
                    out=str(tmp_path / "s.json"))["series"]
    assert any(w.startswith("a tensor chosen with --tensor: not what the paper") for w in fit["warnings"])


def test_no_head_error_lists_candidates(tmp_path):
    path = write_dir(tmp_path / "odd", {"foo.weight": torch.ones(4, 4), "bar.weight": torch.ones(10, 3),
                                        "bar.bias": torch.ones(10)})
    with pytest.raises(WidthlabError) as e:
        A.analyze(model=path, out=str(tmp_path / "x.json"))
    msg = str(e.value)
    assert "pass --tensor NAME" in msg and msg.endswith("bar.weight (10×3), foo.weight (4×4)")
    assert "own checkpoint directory" not in msg and "bias" not in msg
    r = A.analyze(model=path, tensor="bar.weight", out=str(tmp_path / "x.json"), pairs=False)["models"][0]
    assert (r["n"], r["m"]) == (10, 3)


def test_cli_entry_point(gpt2_dir, tmp_path, capsys):
    path, W = gpt2_dir
    other = write_dir(tmp_path / "w8", {"lm_head.weight": rand(100, 8, 11)})
    out = tmp_path / "cli.json"
    main(["analyze", "--model", path, "--out", str(out), "--block_rows", "50"])
    r = json.loads(out.read_text())["models"][0]
    check_stats(r["stats"], W)
    main(["analyze", "--model+", path, "--model+", other, "--series", "true", "--pairs", "false",
          "--out", str(out)])
    res = json.loads(out.read_text())
    assert [m["m"] for m in res["models"]] == [16, 8]
    assert res["series"]["fits"]["mean_cos2"]["slope_ci95"] is None  # 2 models: no interval
    main(["analyze", "--model", f"[{path}, {other}]", "--pairs", "false", "--out", str(out)])
    assert len(json.loads(out.read_text())["models"]) == 2
    capsys.readouterr()


def test_default_out_path(gpt2_dir, tmp_path, monkeypatch):
    path, W = gpt2_dir
    monkeypatch.chdir(tmp_path)
    A.analyze(model=path, pairs=False)
    saved = json.loads((tmp_path / "runs" / "analyze" / "tiny-gpt2.json").read_text())
    assert saved["models"][0]["stats"]["mean_cos2"] == pytest.approx(brute(W)["mean_cos2"], rel=1e-9)
    A.analyze(model=[path, path], pairs=False)
    assert (tmp_path / "runs" / "analyze" / "models.json").exists()


@pytest.mark.parametrize("make, match", [
    (lambda d: str(d / "does-not-exist"), "does not exist"),
    (lambda d: write_dir(d / "nohead", {"foo.weight": torch.ones(4, 4)}), "no LM-head or word-embedding tensor"),
    (lambda d: (d / "bad.safetensors").write_bytes(b"not a safetensors file") and str(d / "bad.safetensors"),
     "cannot read"),
    (lambda d: (d / "empty").mkdir() or str(d / "empty"), "no weights in"),
    (lambda d: write_dir(d / "vec", {"lm_head.weight": torch.ones(5)}), "not a matrix"),
])
def test_bad_inputs(tmp_path, capsys, make, match):
    spec = make(tmp_path)
    with pytest.raises(WidthlabError, match=match):
        A.analyze(model=spec, out=str(tmp_path / "x.json"))
    with pytest.raises(SystemExit) as e:  # through the CLI: exit 2 and one line naming the problem
        main(["analyze", "--model", spec, "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "x.json").exists()
