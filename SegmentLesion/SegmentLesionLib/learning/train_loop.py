"""The optimisation side of a run: one epoch of AdamW steps on sampled patches, and validation on whole cases.

Each iteration samples a batch of patches (lesion-centred with probability ``pos_fraction``, each lesion equally
likely, so small lesions are not drowned by large ones), augments them (``datasets.Augmentation``) and takes one
AdamW step on Dice + cross-entropy (or Dice + focal). Validation segments each whole validation case with a
Gaussian sliding window, as inference does before post-processing, and scores it with ``metrics.dice``.

The patches and augmentations of epoch ``e`` on rank ``r`` derive from ``(seed, e, r)`` alone, so a resumed run
draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import Cancelled
from .train_network import make_loss, predict_foreground, state_dict_copy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data.datasets import PatchSampler, PreparedCase
    from ..models.spec import ModelSpec
    from .checkpoints import Checkpoint
    from .distributed import Distributed
    from .train_settings import TrainSettings

GRADIENT_CLIP = 12.0

# Called between iterations: raises Cancelled, or returns whether the time is up (the same on every rank).
StopCheck = Callable[[], bool]
# (iteration, iterations) a few times per epoch.
IterationCallback = Callable[[int, int], None]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of epoch ``epoch`` on rank ``rank``: independent streams for every epoch and rank."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, epoch, rank]).generate_state(1)[0])


@dataclass
class EpochResult:
    """What one epoch of training did: mean loss over all ranks, iterations on this rank, and whether time ran out."""

    loss: float
    steps: int
    out_of_time: bool


class Trainer:
    """The network with its loss, AdamW optimiser, learning-rate schedule and gradient scaler."""

    def __init__(self, network: Any, spec: ModelSpec, settings: TrainSettings, lr: float, device: torch.device, dist: Distributed) -> None:
        import torch

        self.spec = spec
        self.settings = settings
        self.device = device
        self.dist = dist
        self.lr = lr
        network.to(device)
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            network = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
        self.network = network
        self.loss = make_loss(spec, settings.loss)
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=settings.weight_decay)
        # Polynomial decay over the epochs (nnU-Net's); it reads max_epochs each time, so a resumed run with
        # more epochs stretches the rest of the schedule.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: max(1.0 - epoch / self.settings.max_epochs, 0.0) ** 0.9
        )
        self.amp = settings.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    @property
    def module(self) -> Any:
        """The network itself (inside DistributedDataParallel under torchrun)."""
        return self.network.module if hasattr(self.network, "module") else self.network

    @property
    def current_lr(self) -> float:
        """The learning rate of the next step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def weights(self) -> dict[str, Any]:
        """A CPU copy of the weights."""
        return state_dict_copy(self.network)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint's optimiser, schedule and scaler (the weights are loaded before wrapping)."""
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        # The optimiser stored the rate of the old schedule, which is 0 after the last epoch of a run resumed
        # with more epochs: take this epoch's rate from the schedule over the new max_epochs (the same value when
        # max_epochs is unchanged).
        for group, base, rate in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * rate(self.scheduler.last_epoch)
        if checkpoint.scaler:
            self.scaler.load_state_dict(checkpoint.scaler)

    def train_epoch(
        self, epoch: int, sampler: PatchSampler, out_of_time: StopCheck, on_iteration: IterationCallback | None = None
    ) -> EpochResult:
        """Run the iterations of one epoch (this rank's share), stopping early when ``out_of_time()`` says so."""
        import torch

        settings = self.settings
        seed = epoch_seed(settings.seed, epoch, self.dist.rank)
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.network.train()
        steps = math.ceil(settings.iterations_per_epoch / self.dist.world)
        report_every = max(1, steps // 10)
        total, done, late = 0.0, 0, False
        for step in range(steps):
            total += self._step(sampler, rng)
            done += 1
            if (step + 1) % report_every == 0 and step + 1 < steps and on_iteration is not None:
                on_iteration(step + 1, steps)
            if out_of_time() and step + 1 < steps:
                late = True
                break
        return EpochResult(self.dist.mean(total / max(done, 1), self.device), done, late)

    def _step(self, sampler: PatchSampler, rng: np.random.Generator) -> float:
        """One AdamW step on a batch of patches; returns its loss."""
        import torch

        images, labels = sampler.batch(rng, self.settings.batch_size, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else torch.autocast("cpu", enabled=False)
        with autocast:
            logits = self.network(images)
        loss = self.loss(logits.float(), labels)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), GRADIENT_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.item())

    def validate(self, cases: list[PreparedCase], cancel: Callable[[], bool] | None = None) -> tuple[float | None, dict[str, Any]]:
        """Mean validation Dice over all ranks' cases, and this rank's predicted masks by case ID."""
        from ..engine import metrics

        module = self.module
        module.eval()
        predictions: dict[str, Any] = {}
        scores = []
        for case in cases:
            if cancel is not None and cancel():
                raise Cancelled()
            mask = predict_foreground(module, case, self.spec, self.device, self.amp)
            predictions[case.case_id] = mask
            scores.append(metrics.dice(mask, case.label[0]))
        module.train()
        gathered = [score for part in self.dist.gather(scores) for score in part]
        return (float(np.mean(gathered)) if gathered else None), predictions

    def case_metrics(self, cases: list[PreparedCase], predictions: dict[str, Any]) -> dict[str, Any]:
        """Every metric of every validation case (all ranks'), and their mean: ``{"cases", "mean"}``."""
        from ..engine import metrics

        mine = [
            {"case_id": case.case_id, **metrics.case_metrics(predictions[case.case_id], case.label[0], case.spacing)}
            for case in cases
            if case.case_id in predictions
        ]
        gathered = sorted((case for part in self.dist.gather(mine) for case in part), key=lambda case: case["case_id"])
        return {"cases": gathered, "mean": metrics.mean_metrics(gathered)}
