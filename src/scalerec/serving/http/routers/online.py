"""Online KPIs and experiments (admin): the HTTP face of scalerec.online.manage."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, Response

from scalerec.online import experiments as ex
from scalerec.online.kpis import KpiWindow, position_curve
from scalerec.online.manage import create_experiment, kpi_rows, offline_vs_online, promote_variant, promote_winner
from scalerec.online.report import experiment_report, report_html
from scalerec.serving.http.deps import AdminRole, JsonBodyRoute, Service, json_response
from scalerec.serving.http.errors import AUTH_ERRORS, BODY_ERRORS, error_responses

router = APIRouter(tags=["online"], dependencies=[AdminRole], route_class=JsonBodyRoute,
                   responses=error_responses(*AUTH_ERRORS, 422))


ByName = Literal["version", "model_version", "strategy", "placement", "variant", "experiment", "kind", "day"]


class VariantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=128, description="a registered version, or 'production'")
    weight: float = Field(gt=0, le=1e6)


class ExperimentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # uniqueItems states in the schema what it can of the rule "distinct names and versions" (422 otherwise)
    variants: list[VariantIn] = Field(min_length=2, max_length=16, json_schema_extra={"uniqueItems": True},
                                      description="the first is the control; names and versions distinct")
    placement: str | None = Field(None, min_length=1, max_length=100)
    start: str | None = None
    end: str | None = None
    seed: int = 0
    method: str = Field("split", pattern="^(split|interleave)$", description="split | interleave (team-draft)")


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False
    variant: str | None = None


@router.get("/kpis")
def get_kpis(
    service: Service,
    by: Annotated[list[ByName], Query(description="the columns to group by")] = ["version"],  # noqa: B006
    since: Annotated[str | None, Query(description="ISO date/time or a span back (7d, 24h)")] = None,
    until: str | None = None,
    window_hours: Annotated[float | None, Query(gt=0, le=8760)] = None,
    positions: bool = False,
    offline: bool = False,
) -> Response:
    """Impressions, CTR, add-to-cart rate, conversion and revenue per 1,000 impressions of served lists."""
    s, store = service.settings, service.store
    out: dict[str, Any] = kpi_rows(s, store, by=by, since=since, until=until, window_hours=window_hours)
    if positions:
        out["positions"] = position_curve(store, KpiWindow.from_settings(s, since=since, until=until, window_hours=window_hours))
    if offline:
        out["versions"] = offline_vs_online(s, store, service.registry, since=since, until=until)
    return json_response(out)


@router.get("/experiments")
def list_experiments(service: Service) -> Response:
    return json_response({"experiments": [e.to_dict() for e in ex.list_experiments(service.store.catalog)]})


@router.post("/experiments", status_code=201, responses=error_responses(*BODY_ERRORS, 404, 409))
def create(service: Service, body: ExperimentIn) -> Response:
    """Start an experiment (409 when the name is taken or another runs on the same placement)."""
    exp = create_experiment(service.store.catalog, service.registry, body.name,
                            [ex.Variant(v.name, v.version, v.weight) for v in body.variants],
                            placement=body.placement, start=body.start, end=body.end, seed=body.seed,
                            method=body.method)
    service.experiments.refresh()
    return json_response(exp.to_dict(), status_code=201)


@router.get("/experiments/{name}", responses=error_responses(404))
def show(service: Service, name: str, format: Annotated[str, Query(pattern="^(json|html)$")] = "json") -> Response:
    """The experiment's report: KPIs per variant with intervals and lift, SRM, CUPED, verdict."""
    report = experiment_report(service.settings, service.store, ex.get(service.store.catalog, name))
    if format == "html":
        return HTMLResponse(report_html(report))
    return json_response(report)


@router.post("/experiments/{name}/stop", responses=error_responses(404))
def stop(service: Service, name: str) -> Response:
    exp = ex.stop(service.store.catalog, name)
    service.experiments.refresh()
    return json_response(exp.to_dict())


@router.post("/experiments/{name}/promote-winner", responses=error_responses(*BODY_ERRORS, 404, 409))
def promote(service: Service, name: str, body: PromoteIn | None = None) -> Response:
    """Promote the winner's version and stop the experiment (409 without a significant winner)."""
    body = body or PromoteIn()
    s, store = service.settings, service.store
    if body.force and body.variant:
        out = promote_variant(s, store, service.registry, name, body.variant)
    else:
        out = promote_winner(s, store, service.registry, name, force=body.force)
    service.refresh()
    return json_response(out)
