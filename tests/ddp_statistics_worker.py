"""One rank of tests/test_ddp_statistics.py (2 processes, gloo), and the runs it is compared with.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_statistics_worker.py OUT_DIR

Each rank trains, with DDP on its half of every global batch of 8 sequences:

1. a TopK SAE with AuxK (a small dictionary, a short dead window, so latents go dead within a few steps), Adam;
   it writes its final SAE weights to `OUT_DIR/topk_rank<r>.safetensors`;
2. a Matryoshka TopK SAE e2e (the prefix passes run outside the DDP wrapper, their gradients reduced all the
   same), to `OUT_DIR/matryoshka_rank<r>.safetensors`;
3. a BatchTopK SAE: the threshold after its first training call and this rank's smallest kept value of that call,
   and the threshold and weights after a few steps, to `OUT_DIR/batchtopk_rank<r>.json` / `.safetensors`.

`train_topk_auxk(rows_per_process=8)` in one process (no torch.distributed) is the 1-process reference;
`train_topk_auxk(halves_without_reduction=True)` is what DDP did before the statistics were reduced: each half
with its own AuxK state and statistics, the gradients averaged.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import HIDDEN, VOCAB, tiny_model  # noqa: E402

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder  # noqa: E402
from hf_e2e_sae.training.loss_terms import add_loss_terms, build_loss_terms  # noqa: E402
from hf_e2e_sae.training.losses import LossConfig  # noqa: E402
from hf_e2e_sae.training.step import micro_batch_loss  # noqa: E402

SITE = "blocks.1.resid_pre"
GLOBAL_BATCH, SEQ, STEPS = 8, 16, 25
# dead after 64 tokens without firing: one global batch is 128 tokens, so a latent silent for a step is dead
LOSS = LossConfig(preset="local", sparsity={"coeff": 0.0}, auxk={"coeff": 1.0, "k_aux": 8, "dead_after_tokens": 64})


def global_batch(step: int) -> torch.Tensor:
    return torch.randint(2, VOCAB, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(1000 + step))


def build(activation: str, **options) -> SAEPatchedModel:
    torch.manual_seed(7)
    sae = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=64, activation=activation, k=2, site=SITE, **options))
    return SAEPatchedModel(tiny_model("gpt2"), [sae]).train()


def _loss(model, raw, ids, terms, loss=LOSS) -> tuple:
    total, logged, outputs = micro_batch_loss(model, raw, ids, loss, [], HIDDEN)
    return add_loss_terms(terms, total, logged, outputs, {SITE: raw.sae(SITE)}, HIDDEN)


def train_topk_auxk(rank: int = 0, rows_per_process: int = GLOBAL_BATCH, halves_without_reduction: bool = False,
                    wrap=None) -> tuple:
    """`(final SAE state, [auxk logged per step])`; `wrap(model)` makes the DDP model (None: no wrapping)."""
    raw = build("topk")
    model = wrap(raw) if wrap is not None else raw
    optimizer = torch.optim.Adam(raw.saes.parameters(), lr=1e-2)
    n_parts = 2 if halves_without_reduction else 1
    term_sets = [build_loss_terms(LOSS) for _ in range(n_parts)]
    auxk = []
    for step in range(STEPS):
        ids = global_batch(step)[rank * rows_per_process:(rank + 1) * rows_per_process]
        optimizer.zero_grad()
        for part, terms in zip(ids.chunk(n_parts), term_sets):  # halves: DDP's averaged gradient, per-process stats
            total, logged = _loss(model, raw, part, terms)
            (total / n_parts).backward()
        auxk.append(float(logged["auxk"]))
        optimizer.step()
    return {k: v.detach().clone() for k, v in raw.sae(SITE).state_dict().items()}, auxk


def train_matryoshka_e2e(rank: int = 0, rows_per_process: int = GLOBAL_BATCH, wrap=None, steps: int = 4) -> dict:
    """A Matryoshka TopK SAE trained e2e (one prefix pass per prefix in each step); its final state."""
    raw = build("matryoshka_topk", matryoshka_prefixes=[8, 32])
    model = wrap(raw) if wrap is not None else raw
    optimizer = torch.optim.Adam(raw.saes.parameters(), lr=1e-2)
    loss = LossConfig(preset="e2e", sparsity={"coeff": 0.0})
    for step in range(steps):
        ids = global_batch(step)[rank * rows_per_process:(rank + 1) * rows_per_process]
        optimizer.zero_grad()
        total, _ = _loss(model, raw, ids, {}, loss)
        total.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in raw.sae(SITE).state_dict().items()}


def _smallest_kept(raw, ids) -> float:
    """This process's smallest positive value among its own batch's k * tokens largest (what it kept)."""
    sae = raw.sae(SITE)
    with torch.no_grad(), raw.saes_disabled():
        x = raw(ids, cache_sites=[SITE], stop_early=True).cached_activations[SITE]
        values = torch.relu(sae.pre_activations(x)).reshape(-1)
        kept = values.topk(sae.activation.k * ids.numel()).values
    return float(kept[kept > 0].min())


def main(out_dir: Path) -> None:
    from safetensors.torch import save_file
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, rows = dist.get_rank(), GLOBAL_BATCH // dist.get_world_size()
    torch.set_num_threads(1)
    state, auxk = train_topk_auxk(rank, rows, wrap=DistributedDataParallel)
    save_file(state, str(out_dir / f"topk_rank{rank}.safetensors"))
    save_file(train_matryoshka_e2e(rank, rows, wrap=DistributedDataParallel),
              str(out_dir / f"matryoshka_rank{rank}.safetensors"))

    raw = build("batchtopk")
    model = DistributedDataParallel(raw)
    optimizer = torch.optim.Adam(raw.saes.parameters(), lr=1e-2)
    terms = build_loss_terms(LOSS)
    report = {"auxk": auxk}
    for step in range(5):
        ids = global_batch(step)[rank * rows:(rank + 1) * rows]
        if step == 0:
            report["smallest_kept"] = _smallest_kept(raw, ids)
        optimizer.zero_grad()
        total, _ = _loss(model, raw, ids, terms)
        total.backward()
        optimizer.step()
        if step == 0:
            report["first_threshold"] = float(raw.sae(SITE).activation.threshold)
    report["threshold"] = float(raw.sae(SITE).activation.threshold)
    (out_dir / f"batchtopk_rank{rank}.json").write_text(json.dumps(report))
    save_file({k: v.contiguous() for k, v in raw.sae(SITE).state_dict().items()},
              str(out_dir / f"batchtopk_rank{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
