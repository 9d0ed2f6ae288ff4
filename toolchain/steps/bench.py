"""Bench stage: one unit per artifact x target x threads; one lane per target (runs in parallel)."""

from __future__ import annotations

from ..cache import file_digest
from ..records import BENCH_SCHEMA_VERSION, BenchDocument, BenchRecord, FleetGroupRow
from .base import Done, RunState, Stage, Unit


class BenchStage(Stage):
    name = "benchmark"
    only = "bench"
    result_type = BenchRecord

    def enabled(self, run: RunState) -> bool:
        return run.config.bench.enabled

    def label(self, run: RunState) -> str:
        return f"{len(run.artifacts)} artifact(s) on {', '.join(run.config.bench.targets)}"

    def prepare(self, run: RunState) -> None:
        """An unreachable device fails the run before any conversion."""
        from ..preflight import check_reachable

        if not self.enabled(run) or run.mode(self) != "run":
            return
        export_missing = any(run.context.lookup("export", a.key) is None for a in run.artifacts)
        if export_missing or any(run.lookup(self, u.key) is None for u in self.units(run)):
            # a fleet's device that is off fails only its own rows, when its benchmarks run
            check_reachable([p for p in run.context.profiles if p.name not in run.context.fleet_of])

    def units(self, run: RunState) -> list[Unit]:
        """In report order: target, artifact, threads."""
        config = run.config
        settings = config.bench.model_dump(mode="json", exclude={"enabled", "targets", "threads", "targets_dir"})
        units = []
        for profile in run.context.profiles:
            for artifact in run.artifacts:
                digest = file_digest(artifact.path)
                for threads in config.bench.threads or profile.threads:
                    key = run.context.cache.key("bench", artifact=digest, target=profile, threads=threads,
                                                settings=settings)
                    units.append(Unit(f"{artifact.path.name} {profile.name} {threads}", key=key,
                                      spec=(profile, artifact.path, threads), lane=profile.name,
                                      what=f"{artifact.path.name} on {profile.name} with {threads} thread(s)"))
        return units

    def run_unit(self, run: RunState, unit: Unit) -> BenchRecord:
        from ..stages.bench import run_benchmarks

        profile, path, threads = unit.spec
        records = run_benchmarks([path], [profile], [threads], run.config.bench, fleet_of=run.context.fleet_of)
        return BenchRecord.model_validate(records[0])

    def finish(self, run: RunState, done: list[Done]) -> None:
        from ..manifest import bench_summary

        for item in done:
            item.result.cached = item.cached
        document = BenchDocument(schema_version=BENCH_SCHEMA_VERSION, results=[d.result for d in done],
                                 groups=fleet_groups(run, done))
        run.write_document("bench", document)
        results = run.documents["bench"]["results"]
        for name, record in run.records.items():
            mine = [r for r in results if r["artifact"] == name]
            record["bench"] = bench_summary(mine)
            record["cached"]["bench"] = all(r["cached"] for r in mine)


def fleet_groups(run: RunState, done: list[Done]) -> list[FleetGroupRow] | None:
    """The group rows of the fleet targets (None when the run has none)."""
    from ..config import find_profile
    from ..fleet import group_rows

    fleet_of = run.context.fleet_of
    if not fleet_of:
        return None
    ratios = {name: find_profile(name, run.context.profile_dirs).fleet.outlier_ratio for name in set(fleet_of.values())}
    rows = group_rows([d.result.to_json() for d in done], fleet_of, {}, ratios)
    return [FleetGroupRow.model_validate(row) for row in rows]
