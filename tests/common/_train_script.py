"""A tiny training run through lumenkit.common.train_loop, launched by tests/common/test_train_loop.py
(one process, or N under torchrun). argv: OUT_FOLDER STEPS BATCH PRECISION ACCUM [KILL_AT_STEP [DEVICE]]."""
import sys

import torch

from lumenkit.common.train_loop import TrainConfig, torch_gen, train


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.head = torch.nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.head(torch.nn.functional.silu(self.norm(self.conv(x))).flatten(1))


def main() -> None:
    out, steps, batch, precision, accum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    kill_at = int(sys.argv[6]) if len(sys.argv) > 6 else -1
    device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, ema = Net(), Net()
    w_true = torch.randn(3 * 64, 4, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(steps=steps, batch_size=batch, gradient_accumulation_steps=accum, lr=3e-3, warmup_steps=3,
                      min_lr_ratio=0.1, grad_clip=0.5, ema_decay=0.9, mixed_precision=precision, ckpt_every=4, log_every=1)

    def loss_fn(model, step, rows):
        if step == kill_at:  # simulate a crash after the checkpoint of an earlier step
            import os
            os._exit(9)
        g = torch_gen(0, step)
        x = torch.randn(batch, 3, 8, 8, generator=g)[rows]
        y = x.flatten(1) @ w_true / 14.0  # unit-variance targets
        return torch.nn.functional.mse_loss(model(x.to(device)).float(), y.to(device))

    net, ema = net.to(device), ema.to(device)
    train("tiny", out, cfg, net, loss_fn, ema_model=ema, device=device, progress=False)
    import lumenkit.common.fileio as fio
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        fio.save_state_dict(f"{out}/final.safetensors", {**{f"model.{k}": v for k, v in net.state_dict().items()},
                                                         **{f"ema.{k}": v for k, v in ema.state_dict().items()}})


if __name__ == "__main__":
    main()
