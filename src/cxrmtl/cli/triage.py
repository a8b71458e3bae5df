"""``cxrmtl triage simulate RUN``: a reading-room simulation of FIFO vs urgency order on a split's predictions."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrmtl import labels as L

ORDER = 64

triage_app = typer.Typer(help="Urgency worklist and the reading-room simulation.", no_args_is_help=True)


@triage_app.command("simulate")
def simulate_command(
    run: Path = typer.Argument(..., help="Run folder made by `cxrmtl train` (evaluated, for its thresholds)."),
    data: Path | None = typer.Option(
        None, "--data", help="NIH-layout folder of the run (default: the one recorded in RUN/data.json)."
    ),
    split: str = typer.Option("test", "--split", help="Split whose images feed the reading room: test or val."),
    arrivals: float = typer.Option(
        L.TRIAGE_SIM_ARRIVALS_PER_HOUR, "--arrivals-per-hour", help="Studies arriving per hour (Poisson)."
    ),
    readers: int = typer.Option(L.TRIAGE_SIM_READERS, "--readers", help="Radiologists reading in parallel."),
    read_minutes: float = typer.Option(L.TRIAGE_SIM_READ_MINUTES, "--read-minutes", help="Mean read time (min)."),
    read_time: str = typer.Option(
        L.TRIAGE_SIM_READ_TIME, "--read-time", help="Read-time distribution: fixed, exponential or lognormal."
    ),
    hours: float = typer.Option(L.TRIAGE_SIM_HOURS, "--hours", help="Opening hours with arrivals (then drain)."),
    upper_limit: str = typer.Option(
        str(L.TRIAGE_SIM_UPPER_LIMIT), "--upper-limit-minutes",
        help="Waiting time (minutes) after which a study goes first (policy urgency_upper_limit); "
        "auto = FIFO's longest wait in the same room.",
    ),
    seeds: int = typer.Option(L.TRIAGE_SIM_SEEDS, "--seeds", help="Simulated days (the intervals are over them)."),
    seed: int = typer.Option(0, "--seed", help="Base seed of the simulated days."),
    urgency_config: Path | None = typer.Option(
        None, "--urgency-config", help="YAML with a `triage:` section (default: resources/configs/triage_default.yaml)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: RUN/triage/<split>)."),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache, when the model must predict."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda, when the model must predict."),
) -> None:
    """Simulate FIFO vs urgency vs urgency + upper limit; write triage.json, triage.md, a figure and a section."""
    import logging

    from cxrmtl.errors import ConfigError
    from cxrmtl.triage.run import simulate_run
    from cxrmtl.triage.simulate import SimulationOptions
    from cxrmtl.triage.urgency import load_urgency_config

    try:
        limit: float | str = upper_limit if upper_limit == "auto" else float(upper_limit)
    except ValueError:
        raise ConfigError(f"--upper-limit-minutes: a number of minutes or auto, got {upper_limit!r}") from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    options = SimulationOptions(arrivals_per_hour=arrivals, readers=readers, read_minutes=read_minutes,
                                read_time=read_time, hours=hours, upper_limit_minutes=limit, seeds=seeds,
                                seed=seed)
    result = simulate_run(run, data_root=data, split=split, options=options,
                          config=load_urgency_config(urgency_config), out=out, cache_dir=cache, device=device)
    typer.echo(result.summary)
    typer.echo(f"triage:  {result.markdown_path}")
    typer.echo(f"json:    {result.json_path}")
    typer.echo(f"figure:  {result.figure_path}")
    typer.echo(f"section: {result.section_path} (added to the report by the next `cxrmtl evaluate`)")


def register(app: typer.Typer) -> None:
    app.add_typer(triage_app, name="triage")
