"""The model card: one Markdown page beside the model file (and in its MLflow run) saying what the
model was trained on, how it was chosen, and what it scores, with intervals and baselines.

    text = model_card(final, settings)
    path, text = write_model_card(final, settings)   # {model file}.md, e.g. quantgod_cloud_model.md
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..storage import atomic_write
from .evaluation import priors_line
from .features import FEATURE_CODE_HASH
from .provenance import git_commit
from .reports import num, pct

if TYPE_CHECKING:
    from ..settings import Settings
    from .final import FinalModel

__all__ = ["card_path", "model_card", "write_model_card"]


def card_path(model_path: Path) -> Path:
    return model_path.with_suffix(".md")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _data_section(final: FinalModel, settings: Settings) -> list[str]:
    from .tracking import instrument_label

    lab, opt = settings.labelling, settings.optimization
    days = final.days
    return [
        "## Data",
        f"- Instrument: {instrument_label(settings)}; labelled days {days[0]} .. {days[-1]} ({len(days)} days)",
        f"- Labels `{lab.suffix}`: SELL when the {lab.price_column} return over {lab.lookahead} min is <= "
        f"{100 * lab.threshold_short:+.2f} %, BUY when >= {100 * lab.threshold_long:+.2f} %, else NEUTRAL",
        f"- Windows: train {final.sizes.get('train', 0):,} / validation {final.sizes.get('val', 0):,} / "
        f"test {final.sizes.get('test', 0):,} ({final.extra.get('purge_minutes')} min of window ends dropped at every "
        "boundary: lookahead + seq_len" + (f" + an embargo of {opt.embargo_minutes}" if opt.embargo_minutes else "")
        + ")",
        f"- Test period: {final.test_period[0]} .. {final.test_period[1]} UTC (scored once; it chose nothing)",
        f"- {priors_line(final.priors)} (train and validation of the final model's split)",
    ]


def _training_section(final: FinalModel, settings: Settings) -> list[str]:
    params = {k: v for k, v in final.params.items() if k not in ("device", "log_every")}
    return [
        "## Training",
        f"- Params from {final.params_source}: `{json.dumps(params, sort_keys=True, default=str)}`",
        f"- Selection metric: validation {final.metric} ({settings.optimization.goal}); early stopping, checkpoint "
        "and the kept seed follow it",
        f"- Class weights S/N/B: {'/'.join(f'{w:.2f}' for w in final.class_weights)}",
        f"- Seeds {final.seeds}; kept {final.kept_seed} (best on validation); best epoch {final.best_epoch}; "
        f"{final.n_parameters:,} parameters on {final.device}",
    ]


def _walk_forward_section(final: FinalModel) -> list[str]:
    wf = final.walk_forward
    if wf is None:
        return []
    names = list(wf.folds[0].baselines)
    rows = [[f.fold, f"{f.val_period[0]} .. {f.val_period[1]}", f"{f.train_windows:,} / {f.val_windows:,}",
             f"**{f.model:.4f}**", *(f"{f.baselines[n]:.4f}" for n in names)] for f in wf.folds]
    rows.append(["mean", "", "", f"**{wf.model_mean:.4f}**", *(f"{wf.baseline_mean(n):.4f}" for n in names)])
    return ["## Walk-forward validation (chooses the champion)",
            *_table(["fold", "validation period", "train / val windows", f"model {wf.metric}", *names], rows),
            "", f"Promotion rule: beat persistence and logistic here, and the champion's score on the same days "
            f"(newer days displace older ones). This run: {final.promotion}. The model's fold scores are "
            "optimistic (each fold stops early on the block it is scored on, and the search chose these params "
            "on them); the test block below is the unbiased estimate."]


def _test_section(final: FinalModel) -> list[str]:
    report = final.report
    if report is None:
        return []
    rows = [["**model**", report.interval.format(), "", f"{final.test['f1_weighted']:.4f}",
             f"{final.test['accuracy']:.4f}"]]
    for name, base in report.baselines.items():
        rows.append([name, f"{base['f1_macro']:.4f}", report.edges[name].format(signed=True),
                     f"{base['f1_weighted']:.4f}", f"{base['accuracy']:.4f}"])
    lines = ["## Test block (scored once)",
             *_table(["", "F1 macro", "model − this", "F1 weighted", "accuracy"], rows), ""]
    lines += [f"- {line}" for line in report.verdicts.values()]
    lines.append(f"- **Verdict: {report.verdict}**")
    lines.append(f"- Intervals: {int(100 * report.interval.confidence)} % moving-block bootstrap, blocks of "
                 f"{report.block} windows (neighbouring windows share label minutes and inputs)")
    if len(final.seeds) > 1:
        lines.append("- Over the seeds (mean ± std): " + ", ".join(
            f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in report.seeds.items() if k.startswith(("f1_", "accuracy"))))
    per_class = [[c.upper(), f"{final.test[f'precision_{c}']:.3f}", f"{final.test[f'recall_{c}']:.3f}",
                  f"{final.test[f'f1_{c}']:.3f}"] for c in ("sell", "neutral", "buy")]
    return [*lines, "", *_table(["class", "precision", "recall", "F1"], per_class)]


def _instrument_rows(reports: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    names = list(next(iter(reports.values())).baselines)
    rows = [[key, f"{r.model['n']:,}", r.interval.format(), *(f"{r.baselines[n]['f1_macro']:.4f}" for n in names)]
            for key, r in reports.items()]
    return ["instrument", "test windows", "model F1 macro", *names], rows


def _instruments_section(final: FinalModel) -> list[str]:
    """Per training instrument (several) and per unseen instrument: macro-F1 with its interval and
    every baseline's on that instrument's test windows."""
    report = final.report
    if report is None or not (report.instruments or report.unseen):
        return []
    lines: list[str] = []
    if report.instruments:
        header, rows = _instrument_rows(report.instruments)
        lines += ["## Test block per instrument", "The pooled scores above, on each training instrument's test "
                  "windows (the same calendar cut for all).", "", *_table(header, rows), ""]
    if report.unseen:
        header, rows = _instrument_rows(report.unseen)
        lines += ["## Unseen instruments (never trained on; reported, never used to choose)",
                  "Over the same test period, each scaled with statistics of its own development-period rows; "
                  "majority and stratified at the training priors, logistic fitted on the training instruments.",
                  "", *_table(header, rows), ""]
        lines += [f"- {key}: {line}" for key, r in report.unseen.items() for line in r.verdicts.values()]
    return lines


def _backtest_section(final: FinalModel, settings: Settings) -> list[str]:
    bt_settings = settings.training.backtest
    rows = []
    for name, bt in final.backtests.items():
        rows.append([f"**{name}**" if name == "model" else name, bt["n_trades"],
                     f"{pct(bt['net_return'])} [{pct(bt.get('net_return_low'))}, {pct(bt.get('net_return_high'))}]",
                     pct(bt["hit_rate"]), bt.get("sharpe_text", num(bt.get("sharpe"))), pct(bt["max_drawdown"])])
    only = final.backtests["model"].get("instrument") if final.backtests else None
    per_instrument = []
    for key, per in final.backtests_by_instrument.items():  # several instruments: each one's own block
        per_instrument += [[key, f"**{name}**" if name == "model" else name, bt["n_trades"],
                            f"{pct(bt['net_return'])} [{pct(bt.get('net_return_low'))}, "
                            f"{pct(bt.get('net_return_high'))}]", pct(bt["hit_rate"])] for name, bt in per.items()]
    per_table = (["", "Each instrument's own test block (a trade never spans two instruments):", "",
                  *_table(["instrument", "signal", "trades", "net return [interval]", "hit rate"], per_instrument)]
                 if per_instrument else [])
    return ["## Backtest on the test block",
            *([f"Trained on several instruments: the first table trades {only}'s test block (the headline "
               "figure), the second every instrument's own."] if only else []),
            f"Long at the ask, short at the bid of the minute after the signal, out after "
            f"{settings.labelling.lookahead} min at the other side; fee {100 * bt_settings.fee:.3f} % a side, "
            f"slippage {bt_settings.slippage_bps:g} bps a side; Sharpe needs {bt_settings.min_trades} trades.", "",
            *_table(["signal", "trades", "net return [interval]", "hit rate", "Sharpe", "max drawdown"], rows),
            *per_table]


def model_card(final: FinalModel, settings: Settings) -> str:
    """The card's Markdown text."""
    from .tracking import instrument_label

    title = f"# Model card: {final.params.get('arch')} on {instrument_label(settings)} `{settings.labelling.suffix}`"
    lines = [title, "",
             f"Written {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; file `{final.model_path.name}`; "
             f"git {git_commit()}; feature code {FEATURE_CODE_HASH}.", ""]
    for section in (_data_section(final, settings), _training_section(final, settings), _walk_forward_section(final),
                    _test_section(final), _instruments_section(final), _backtest_section(final, settings)):
        if section:
            lines += [*section, ""]
    if final.mlflow_run_id:
        lines += ["## MLflow", f"- Run {final.mlflow_run_id}; registered version {final.registered_version}; "
                  + ("champion now" if final.promoted else "not champion")
                  + (f" (holder's walk-forward score {final.previous_champion:.4f}"
                     + (f", its test F1 macro {final.champion_test_f1_macro:.4f}, reported only"
                        if final.champion_test_f1_macro is not None else "") + ")"
                     if final.previous_champion is not None else ""), ""]
    return "\n".join(lines)


def write_model_card(final: FinalModel, settings: Settings) -> tuple[Path, str]:
    """Writes the card beside the model file; returns (path, text)."""
    text = model_card(final, settings)
    path = card_path(final.model_path)
    atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))
    return path, text
