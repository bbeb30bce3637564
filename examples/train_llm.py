"""Train a tiny GPT-style character model with DistributedDataParallel.

A realistic-shaped job for the launcher that still finishes in about a minute on two CPU
cores: every rank trains on its own shard of a synthetic corpus, gradients are averaged by
DDP, and rank 0 logs the loss. Run it under torchrun (or the launcher)::

    python -m torch.distributed.run --standalone --nproc-per-node 2 examples/train_llm.py

or as a plain script (one process, world size 1)::

    python examples/train_llm.py --steps 50

The corpus is generated in code from a small grammar with a fixed seed, so every rank, on
every host, builds the same text without downloading or shipping any data.

It is restartable: with ``--checkpoint-dir DIR`` it saves its training state in DIR every
``--checkpoint-every`` steps, and when started again (by ``launcher launch --restarts N``
after a failure, or by hand) it continues from the latest complete checkpoint there, not
from step 0. "checkpoints" below says how, also when the hosts share no disk.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import random
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Fixed apart from --seed: the corpus plays the part of a data set, which does not change
# when the model's initialisation or the batch order does.
CORPUS_SEED = 1234
CORPUS_SENTENCES = 20_000
# Long enough for the slowest host of a cold multi-host start to reach the rendezvous,
# short enough that a missing host fails the job instead of hanging it. It also bounds
# every collective, far above what one step of this model takes.
INIT_TIMEOUT = timedelta(seconds=120)
# Below 1 to favour likely characters, so the sample shows what the model learned.
SAMPLE_TEMPERATURE = 0.8


# --- data -------------------------------------------------------------------------------

DETERMINERS = ["the", "a", "every", "no", "one"]
ADJECTIVES = ["quick", "lazy", "small", "old", "bright", "quiet", "red", "clever"]
NOUNS = ["fox", "dog", "cat", "bird", "farmer", "child", "river", "robot", "teacher"]
VERBS = ["sees", "follows", "likes", "chases", "finds", "helps", "watches", "hears"]
ADVERBS = ["slowly", "quickly", "often", "never", "quietly", "today"]
PREPOSITIONS = ["near", "under", "behind", "beside", "over"]


def noun_phrase(rng: random.Random) -> str:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(NOUNS))
    return " ".join(words)


def sentence(rng: random.Random) -> str:
    words = [noun_phrase(rng)]
    if rng.random() < 0.3:
        words.append(rng.choice(ADVERBS))
    words += [rng.choice(VERBS), noun_phrase(rng)]
    if rng.random() < 0.3:
        words += [rng.choice(PREPOSITIONS), noun_phrase(rng)]
    return " ".join(words) + "."


def build_corpus() -> str:
    rng = random.Random(CORPUS_SEED)
    return "\n".join(sentence(rng) for _ in range(CORPUS_SENTENCES)) + "\n"


@dataclass(frozen=True)
class CharTokenizer:
    """Maps each character of the corpus to an id; the vocabulary is the sorted character set."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> torch.Tensor:
        index = {char: i for i, char in enumerate(self.chars)}
        return torch.tensor([index[char] for char in text], dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def split_windows(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut tokens into non-overlapping rows of seq_len + 1 (inputs plus the next-token target)."""
    rows = (len(tokens) - 1) // seq_len
    starts = torch.arange(rows) * seq_len
    return tokens[starts[:, None] + torch.arange(seq_len + 1)]


# --- model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_len: int
    d_model: int
    layers: int
    heads: int


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time_, width = x.shape
        # (batch, time, width) -> three (batch, heads, time, head_width) tensors.
        q, k, v = (
            part.view(batch, time_, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, time_, width))


class Block(nn.Module):
    """Pre-norm transformer block: normalising before each sublayer keeps training stable
    without a learning-rate warmup."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, 4 * config.d_model),
            nn.GELU(),
            nn.Linear(4 * config.d_model, config.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.Sequential(*(Block(config) for _ in range(config.layers)))
        self.final_norm = nn.LayerNorm(config.d_model)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        x = self.final_norm(self.blocks(x))
        # Tied head: the output projection reuses the input embedding, halving the
        # parameters spent on the vocabulary.
        return F.linear(x, self.token_embedding.weight)


# --- training ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Worker:
    """This process's place in the job."""

    rank: int
    local_rank: int
    """Rank among this host's processes: local rank 0 writes this host's checkpoints."""
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per rank per step")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--d-model", type=int, default=96)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10, help="steps between loss lines")
    parser.add_argument("--save", type=Path, help="write a checkpoint here (rank 0) at the end")
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="save the training state here (each host its own copy) and resume from it"
    )
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument(
        "--step-delay", type=float, default=0.0, help="seconds to sleep after each step: a job slow enough to kill"
    )
    args = parser.parse_args()
    for name in ("steps", "batch_size", "seq_len", "d_model", "layers", "heads", "log_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.step_delay < math.inf:  # also refuses nan
        parser.error("--step-delay must be a number of seconds, at least 0")
    if args.d_model % args.heads:
        parser.error(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    return args


def choose_num_threads() -> int:
    # torchrun exports OMP_NUM_THREADS=1 when it starts several processes per host; without
    # it, share this host's cores among its processes rather than oversubscribing them.
    if "OMP_NUM_THREADS" in os.environ:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def init_distributed() -> Worker:
    """Join the job's process group (nccl on GPUs, gloo on CPUs)."""
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if "RANK" in os.environ:  # started by torchrun, which also exports MASTER_ADDR, ...
        local_rank = int(os.environ["LOCAL_RANK"])
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=INIT_TIMEOUT)
    else:
        # A one-process group over an in-memory store: the same DDP code path runs without
        # torchrun and without opening a port.
        local_rank = 0
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Worker(dist.get_rank(), local_rank, dist.get_world_size(), device)


def attempt() -> int:
    """Which try of the job this is: 1, then 2 once ``launcher launch --restarts`` relaunched it..."""
    try:
        import launcher
    except ImportError:  # launcher need not be installed where the job runs; this is all it reads
        return int(os.environ.get("LAUNCHER_ATTEMPT") or 1)
    return launcher.context().attempt


def load_shards(seq_len: int, worker: Worker) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """The tokenizer and this rank's (train, validation) windows: 90% / 10% of the corpus."""
    text = build_corpus()
    tokenizer = CharTokenizer.from_text(text)
    windows = split_windows(tokenizer.encode(text), seq_len)
    split = int(0.9 * len(windows))
    # Manual striding: rank r takes rows r, r + W, r + 2W, ... of each split, so the shards
    # are disjoint and together cover the data.
    stride = slice(worker.rank, None, worker.world_size)
    return tokenizer, windows[:split][stride], windows[split:][stride]


def mean_over_ranks(value: float, device: torch.device) -> float:
    # SUM then divide rather than ReduceOp.AVG, which gloo does not support.
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item() / dist.get_world_size()


def learning_rate(step: int, total_steps: int, peak: float) -> float:
    """Cosine decay from peak to peak / 10: a high rate early for speed, a low one late to settle."""
    progress = step / max(1, total_steps - 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: GPT, tokenizer: CharTokenizer, train_shard: torch.Tensor, args: argparse.Namespace, worker: Worker
) -> tuple[float, float]:
    """Train up to step args.steps, from the latest checkpoint if there is one; return the
    (first, last) loss of this run, averaged over ranks."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start = 0
    if args.checkpoint_dir is not None:
        start = restore(args.checkpoint_dir, model, optimizer, worker)
        if worker.is_main:
            print(f"{'resumed' if start else 'starting'} from step {start} (attempt {attempt()})", flush=True)
    ddp_model = DistributedDataParallel(
        model, device_ids=[worker.device.index] if worker.device.type == "cuda" else None
    )
    batch_generator = torch.Generator()
    tokens_per_step = worker.world_size * args.batch_size * args.seq_len

    first_loss = last_loss = math.nan
    last_log_time, last_log_step = time.perf_counter(), start
    for step in range(start + 1, args.steps + 1):
        # Each rank draws its own batches from its own shard. Seeded by the step, not carried
        # over from the steps before, so a resumed run draws what an unbroken one would have.
        batch_generator.manual_seed((args.seed * 1000 + worker.rank) * 1_000_000 + step)
        rows = torch.randint(len(train_shard), (args.batch_size,), generator=batch_generator)
        batch = train_shard[rows].to(worker.device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step - 1, args.steps, args.lr)

        logits = ddp_model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here, overlapped with the backward pass
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        due = args.checkpoint_dir is not None and (step % args.checkpoint_every == 0 or step == args.steps)
        if due and worker.local_rank == 0:  # every host's local rank 0: see "checkpoints" below
            path = save_training_state(args.checkpoint_dir, step, model, optimizer, tokenizer)
            print(f"saved checkpoint {path}", flush=True)
        if step == start + 1 or step % args.log_every == 0 or step == args.steps:
            # Every rank takes part in the all-reduce; only rank 0 prints.
            last_loss = mean_over_ranks(loss.item(), worker.device)
            if step == start + 1:
                first_loss = last_loss
            now = time.perf_counter()
            tokens_per_s = (step - last_log_step) * tokens_per_step / (now - last_log_time)
            last_log_time, last_log_step = now, step
            if worker.is_main:
                print(f"step {step}/{args.steps} loss {last_loss:.3f} tokens/s {tokens_per_s:.0f}", flush=True)
        time.sleep(args.step_delay)
    return first_loss, last_loss


@torch.no_grad()
def evaluate(model: GPT, windows: torch.Tensor, device: torch.device, batch_size: int = 64) -> float:
    """Mean next-token loss over every rank's validation windows."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(batch[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    model.train()
    sums = torch.tensor([total, count], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return (sums[0] / sums[1]).item()


@torch.no_grad()
def sample(model: GPT, tokenizer: CharTokenizer, prompt: str, length: int, seed: int) -> str:
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt)[None].to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for _ in range(length):
        logits = model(ids[:, -model.config.seq_len :])[:, -1]
        probs = F.softmax(logits / SAMPLE_TEMPERATURE, dim=-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return tokenizer.decode(ids[0].tolist())


# --- checkpoints ------------------------------------------------------------------------
#
# Hosts need not share a disk, and a restart may run on other hosts than the last attempt
# (a spare in place of a lost one), so every host's local rank 0 writes the checkpoint into
# --checkpoint-dir on its own disk: DDP keeps the model and the optimizer the same on every
# rank, so every copy is the same. At start every rank reads its own host's newest copy,
# the ranks agree on the newest step any of them holds, and the lowest rank holding it
# sends its state to those that lack it (hosts new to the job, or with an older copy).
# On a shared disk the hosts write the same file name at the same time: each writes a temp
# file of its own (host and pid in its name) and renames it into place with os.replace,
# which is atomic; the contents are the same, so whichever rename lands last is as good.

CHECKPOINT_NAME = re.compile(r"step-([0-9]+)\.pt")
KEEP_CHECKPOINTS = 2  # the newest, and the one before it in case the newest cannot be read


def checkpoint_state(model: GPT, tokenizer: CharTokenizer, steps: int) -> dict[str, Any]:
    # The config and vocabulary travel with the weights so the file alone rebuilds the model.
    return {"model": model.state_dict(), "config": asdict(model.config), "vocab": tokenizer.chars, "steps": steps}


def save_checkpoint(path: Path, model: GPT, tokenizer: CharTokenizer, steps: int) -> None:
    atomic_save(checkpoint_state(model, tokenizer, steps), path)


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """Write path whole or not at all: a crash mid-write leaves only a temp file, which no reader takes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # and so is the rename
    finally:
        os.close(directory)


def checkpoint_files(directory: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints in directory, newest first (temp files are not among them)."""
    matches = (CHECKPOINT_NAME.fullmatch(path.name) for path in directory.glob("step-*.pt"))
    return sorted(((int(m[1]), directory / m[0]) for m in matches if m), reverse=True)


def save_training_state(
    directory: Path, step: int, model: GPT, optimizer: torch.optim.Optimizer, tokenizer: CharTokenizer
) -> Path:
    state = checkpoint_state(model, tokenizer, step)
    # The global generator is the same on every rank (seeded alike, drawn alike); this model
    # draws nothing from it while training, one with dropout would.
    state.update(optimizer=optimizer.state_dict(), rng=torch.get_rng_state())
    path = directory / f"step-{step:08d}.pt"
    atomic_save(state, path)
    # The older ones only once the new one is in place. On a shared disk another host may
    # have removed them already.
    for _, old in checkpoint_files(directory)[KEEP_CHECKPOINTS:]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> dict[str, Any] | None:
    """The newest checkpoint in directory that can be read, or None."""
    for _, path in checkpoint_files(directory):
        try:
            # weights_only: tensors and plain values only, so loading a file runs no code from it.
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as error:
            print(f"train_llm: skipping unreadable checkpoint {path}: {error}", file=sys.stderr, flush=True)
    return None


def restore(directory: Path, model: GPT, optimizer: torch.optim.Optimizer, worker: Worker) -> int:
    """Load the newest checkpoint any rank's host holds into model and optimizer; return its
    step, 0 where none has one."""
    state = newest_state(directory, worker)
    if state is None:
        return 0
    if state["config"] != asdict(model.config):
        raise SystemExit(f"train_llm: the checkpoint in {directory} is of another model: {state['config']}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["steps"])  # also the learning-rate schedule's position: a function of the step


def newest_state(directory: Path, worker: Worker) -> dict[str, Any] | None:
    """The newest training state any rank's host holds, the same on every rank; None: none has one."""
    if worker.local_rank == 0:  # temp files of this host's earlier attempts, killed mid-write
        for temp in directory.glob(f".step-*.pt.{socket.gethostname()}.*.tmp"):
            temp.unlink(missing_ok=True)
    state = load_latest(directory)
    mine = state["steps"] if state is not None else 0
    newest = reduce_int(mine, dist.ReduceOp.MAX, worker.device)
    if newest == 0:
        return None
    if reduce_int(mine, dist.ReduceOp.MIN, worker.device) < newest:  # some rank lacks it
        holder = reduce_int(worker.rank if mine == newest else worker.world_size, dist.ReduceOp.MIN, worker.device)
        # Pickled between the job's own ranks, not read from a file.
        box = [state if worker.rank == holder else None]
        dist.broadcast_object_list(box, src=holder)
        state = box[0]
    return state


def reduce_int(value: int, op: dist.ReduceOp.RedOpType, device: torch.device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=op)
    return int(tensor.item())


def main() -> int:
    args = parse_args()
    torch.set_num_threads(choose_num_threads())
    worker = init_distributed()
    tokenizer, train_shard, val_shard = load_shards(args.seq_len, worker)

    # The same seed on every rank gives identical initial weights (DDP would broadcast rank
    # 0's anyway, but this keeps single-process and multi-process runs comparable).
    torch.manual_seed(args.seed)
    config = GPTConfig(len(tokenizer.chars), args.seq_len, args.d_model, args.layers, args.heads)
    model = GPT(config).to(worker.device)
    if worker.is_main:
        print(
            f"train_llm: world_size={worker.world_size} device={worker.device} "
            f"threads={torch.get_num_threads()} vocab={config.vocab_size} "
            f"params={sum(p.numel() for p in model.parameters())} "
            f"tokens/step={worker.world_size * args.batch_size * args.seq_len}",
            flush=True,
        )

    started = time.perf_counter()
    first_loss, last_loss = train(model, tokenizer, train_shard, args, worker)
    elapsed = time.perf_counter() - started
    val_loss = evaluate(model, val_shard, worker.device)
    if worker.is_main:
        print(
            f"final loss {last_loss:.3f} (first {first_loss:.3f}) val loss {val_loss:.3f} in {elapsed:.1f}s",
            flush=True,
        )
        print(f"sample: {sample(model, tokenizer, 'the ', 80, args.seed)!r}", flush=True)
        if args.save is not None:
            save_checkpoint(args.save, model, tokenizer, args.steps)
            print(f"saved checkpoint to {args.save}", flush=True)

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_code = main()
    # Skip the interpreter's shutdown. Once DDP has used it, the gloo process group outlives
    # destroy_process_group() (seen with torch 2.13), and if one of its worker threads frees
    # a finished collective while Python is finalizing, the process aborts with "terminate
    # called without an active exception": a good run reported as a failed rank. Every
    # file is closed by now; only our own output needs flushing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
