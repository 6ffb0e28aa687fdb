"""The training progress bar counts optimizer steps, with their rate, from the step a resumed run starts at;
micro-batches appear only in its label."""

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from blockbert.train.callbacks import StepProgressBar

WIDE = {"width": 200}  # a terminal of 200 columns (a test's is 80, where the bar is narrow)


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Recorded(StepProgressBar):
    """The training bar's (completed, total, description) each time it is shown."""

    def __init__(self, console_kwargs=WIDE):
        super().__init__(console_kwargs=console_kwargs)
        self.shown = []

    def _show_steps(self, trainer):
        super()._show_steps(trainer)
        task = self.progress.tasks[self.train_progress_bar_id]
        self.shown.append((task.completed, task.total, task.description))


def fit(tmp_path, bar, ckpt_path=None, **trainer_args):
    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2)  # 6 micro-batches an epoch
    trainer = pl.Trainer(
        callbacks=[bar], logger=False, enable_checkpointing=False, default_root_dir=tmp_path, **trainer_args
    )
    trainer.fit(Tiny(), data, ckpt_path=ckpt_path)
    return trainer


def test_the_bar_counts_optimizer_steps_across_epochs_and_names_micro_batches(tmp_path):
    bar = Recorded()
    fit(tmp_path, bar, max_steps=5, max_epochs=-1, accumulate_grad_batches=2)  # 3 steps an epoch
    completed, total, description = bar.shown[-1]
    assert (completed, total) == (5, 5)
    assert description == "optimizer steps (2 micro-batches each)"
    assert [c for c, _, _ in bar.shown] == sorted(c for c, _, _ in bar.shown)  # never reset by an epoch
    assert max(c for c, _, _ in bar.shown) <= 5


def test_epochs_give_the_total_and_a_resume_starts_at_its_step(tmp_path):
    bar = Recorded()
    trainer = fit(tmp_path, bar, max_epochs=2, accumulate_grad_batches=3)
    assert bar.shown[-1][:2] == (4, 4) and bar.shown[-1][2] == "epoch 2/2, optimizer steps (3 micro-batches each)"
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    resumed = Recorded()
    fit(tmp_path, resumed, ckpt_path=tmp_path / "two.ckpt", max_epochs=3, accumulate_grad_batches=3)
    assert resumed.shown[0][0] == 4 and resumed.shown[-1][:2] == (6, 6)
    ended = Recorded()  # the epochs end before max_steps (before: the bar ended at 4/30)
    fit(tmp_path, ended, max_epochs=2, max_steps=30, accumulate_grad_batches=3)
    assert ended.shown[-1][:2] == (4, 4)


def test_the_training_rate_is_in_optimizer_steps(tmp_path):
    bar = StepProgressBar(console_kwargs=WIDE)
    fit(tmp_path, bar, max_steps=2, max_epochs=-1)
    rate = bar.configure_columns(None)[-1]

    class Task:
        id, speed = bar.train_progress_bar_id, 3.5

    assert rate.render(Task()).plain == "3.50 steps/s"


def test_the_bar_reads_the_logged_values_once_a_second_not_every_step(tmp_path, monkeypatch):
    """Reading logged tensors is a host sync on a GPU: at most once per METRICS_EVERY_S of the (faked) clock, and
    after validation, where Lightning's bar read them every batch."""
    import blockbert.train.callbacks as callbacks

    now = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    bar, read_at = Recorded(), []

    def update(trainer, pl_module):
        read_at.append(trainer.global_step)

    monkeypatch.setattr(bar, "_update_metrics", update)

    class Ticking(Tiny):
        def training_step(self, batch, batch_idx):
            now[0] += 0.3  # a step takes 0.3 s
            return super().training_step(batch, batch_idx)

    data = DataLoader(TensorDataset(torch.randn(20, 2)), batch_size=2)
    trainer = pl.Trainer(callbacks=[bar], logger=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         max_steps=10, limit_val_batches=0)  # fmt: skip
    trainer.fit(Ticking(), data)
    during = [step for step in read_at if step < 10]
    assert during == [1, 5, 9], read_at  # the first step, then every fourth (1.2 s)
    assert bar.shown[-1][0] == 10  # the steps themselves are shown every step


def test_training_converts_no_logged_tensor_a_step_and_the_bar_still_shows_the_loss(tmp_path, monkeypatch):
    """Lightning converts every prog_bar value to a Python number at the end of each batch (a host sync a step on a
    GPU): our modules log none in training, and the bar reads the loss and the rate itself, once a second."""
    from pytorch_lightning.trainer.connectors.logger_connector import result

    from blockbert import preset_config
    from blockbert.train.pretrain_module import PretrainModule

    converted = []
    convert = result.convert_tensors_to_scalars
    monkeypatch.setattr(result, "convert_tensors_to_scalars", lambda value: converted.append(value) or convert(value))
    torch.manual_seed(0)
    optim = dict(lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01, warmup_steps=0)
    module = PretrainModule(preset_config("tiny", vocab_size=100), False, optim, max_steps=6)
    ids = torch.randint(5, 100, (12, 16))
    labels = torch.where(torch.rand(12, 16) < 0.2, ids, -100)
    rows = [dict(input_ids=i, attention_mask=torch.ones_like(i), labels=lab) for i, lab in zip(ids, labels)]
    bar = StepProgressBar(console_kwargs=WIDE)
    trainer = pl.Trainer(callbacks=[bar], logger=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         max_steps=6, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, DataLoader(rows, batch_size=2))
    assert converted == []
    shown = bar.get_metrics(trainer, module)
    assert shown["loss"] > 0 and int(shown["tokens/s"]) > 0


def test_a_narrow_terminal_gets_the_bar_on_one_line(tmp_path):
    """80 columns: a short label, a 20-column bar, the loss alone and no rate (before: 3 lines, labels cut)."""
    bar = Recorded(console_kwargs={"width": 80})
    trainer = fit(tmp_path, bar, max_steps=5, max_epochs=-1, accumulate_grad_batches=2)
    assert bar.shown[-1][2] == "steps (x2)" and bar.configure_columns(trainer)[1].bar_width == 20
    assert not any(type(column).__name__ == "StepRate" for column in bar.configure_columns(trainer))
    assert set(bar.get_metrics(trainer, None)) <= {"loss"}
