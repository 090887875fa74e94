"""Traces: BentoML's tracer, set up from the profile and the standard ``OTEL_*`` variables,
and what bentochain adds under the spans BentoML opens.

BentoML 1.4 opens a server span for every request (OpenTelemetry's ASGI middleware, with its
own tracer provider) and sends the trace context on to the services it calls. bentochain turns
its exporter on (OTLP over HTTP) and adds its spans as children of that request span, with the
same provider, so one trace holds the whole request: no second tracer beside BentoML's.
With tracing off, BentoML's ASGI layer is told to skip every request and the request's span is
bentochain's (``untraced_span``): ids without the cost of spans nobody exports.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bentochain.config.schema import TracingSettings

DEFAULT_ENDPOINT = "http://localhost:4318"  # OTLP/HTTP's default port
TRACES_PATH = "/v1/traces"
_FIXED_SAMPLERS = {
    "always_on": 1.0,
    "parentbased_always_on": 1.0,
    "always_off": 0.0,
    "parentbased_always_off": 0.0,
}
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
ASGI_MESSAGE_ATTRIBUTE = "asgi.event.type"  # set on the ASGI layer's send/receive spans
_W3C = TraceContextTextMapPropagator()  # both stateless: one each per process
_IDS = RandomIdGenerator()


class TracingConfigError(ValueError):
    """The tracing settings cannot be used; the message names the variable to change."""


def sample_rate(settings: TracingSettings, environ: Mapping[str, str]) -> float:
    """The share of new traces kept. BentoML samples parent-based by trace id ratio, so each
    standard sampler maps to a ratio; the others cannot be honoured and are refused."""
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not sampler:
        return settings.sample_rate
    if sampler in _FIXED_SAMPLERS:
        return _FIXED_SAMPLERS[sampler]
    if sampler not in _RATIO_SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER={sampler!r}: BentoML's tracer samples by trace id ratio; use "
            "always_on, always_off, traceidratio or their parentbased_ forms"
        )
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
    try:
        rate = float(raw)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: a ratio from 0 to 1")
    return rate


def traces_endpoint(settings: TracingSettings, environ: Mapping[str, str]) -> str | None:
    """Where spans are posted: the signal's own variable, the base one, then the profile."""
    own = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if own:
        return own
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or settings.endpoint
    return f"{base.rstrip('/')}{TRACES_PATH}" if base else None


@dataclass(frozen=True)
class Export:
    """Where spans go and how many: tracing as resolved for this process."""

    endpoint: str
    sample_rate: float


def resolve(settings: TracingSettings, environ: Mapping[str, str]) -> Export | None:
    """The tracing this process runs, or None when it is off (then no exporter exists and
    nothing is sampled: a span costs a context and an id)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter not in ("", "otlp"):
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: bentochain exports OTLP")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol != "http/protobuf":
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: bentochain exports OTLP over HTTP "
            "(http/protobuf); point it at the collector's HTTP port (4318)"
        )
    endpoint = traces_endpoint(settings, environ)
    enabled = settings.enabled if settings.enabled is not None else endpoint is not None
    if not enabled:
        return None
    return Export(endpoint or DEFAULT_ENDPOINT + TRACES_PATH, sample_rate(settings, environ))


def bentoml_tracing(export: Export | None) -> dict[str, Any]:
    """BentoML's ``tracing`` service configuration.

    On: its sampler, and no exporter of its own (``export_spans`` adds ours, which leaves out
    the ASGI layer's per-message spans). Off: its ASGI layer skips every URL; it would open a
    span for the request and one per ASGI message only to drop them (a tenth of the gateway's
    Python time), and ``untraced_span`` gives the request its ids instead.
    """
    if export is None:
        return {"excluded_urls": [".*"]}
    return {"sample_rate": export.sample_rate}


def untraced_span(headers: Iterable[tuple[bytes, bytes]]) -> trace.NonRecordingSpan:
    """The request's span when tracing is off: the caller's trace (its W3C ``traceparent``) or
    a new one, a new span id, nothing recorded. As current span, it names the trace in
    ``traceresponse``, logs and records, and BentoML's client sends it on to the callees."""
    carrier = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in headers
        if k in (b"traceparent", b"tracestate")
    }
    caller = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    return trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=caller.trace_id if caller.is_valid else _IDS.generate_trace_id(),
            span_id=_IDS.generate_span_id(),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),  # not sampled: not exported
            trace_state=caller.trace_state,
        )
    )


class _WithoutMessageSpans(SpanExporter):
    """Exports all but the spans OpenTelemetry's ASGI middleware opens for every ASGI message:
    a streamed answer would otherwise send one span per chunk."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        kept = [s for s in spans if not (s.attributes or {}).get(ASGI_MESSAGE_ATTRIBUTE)]
        return self.inner.export(kept) if kept else SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def export_spans(export: Export) -> None:
    """Send the spans of BentoML's tracer provider to ``export.endpoint`` (OTLP/HTTP), in
    batches off the request path (``OTEL_BSP_*`` tune them). Once per worker process."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = _bentoml_provider()
    if isinstance(provider, TracerProvider):
        exporter = _WithoutMessageSpans(OTLPSpanExporter(endpoint=export.endpoint))
        provider.add_span_processor(BatchSpanProcessor(exporter))


def drop_unexported_spans() -> None:
    """With tracing off, BentoML's tracer drops spans instead of recording them. Once per
    worker process, before its ASGI layers take their tracers.

    BentoML's sampler records every span it does not sample (``RECORD_ONLY``), so with nothing
    to export each span bentochain opens (a generation, a chain step) would still be built and
    filled for nobody. A dropped span keeps its trace and span ids, so logs still name them.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = _bentoml_provider()
    if isinstance(provider, TracerProvider):
        provider.sampler = ALWAYS_OFF
        for handed_out in getattr(provider, "_tracers", {}).values():  # taken before this call
            handed_out.sampler = ALWAYS_OFF


def keep_service_names(environ: MutableMapping[str, str] = os.environ) -> None:
    """Each BentoML service reports its own ``service.name`` (Gateway, LLM...).

    BentoML names the resource after the service, then lets ``OTEL_SERVICE_NAME`` override
    it, so one variable set for a whole Bento would give every service the same name. That
    variable becomes the ``service.namespace`` instead: the deployment the services belong to.
    """
    name = environ.pop("OTEL_SERVICE_NAME", "").strip()
    if not name:
        return
    attributes = environ.get("OTEL_RESOURCE_ATTRIBUTES", "").strip()
    namespace = f"service.namespace={name}"
    environ["OTEL_RESOURCE_ATTRIBUTES"] = f"{attributes},{namespace}" if attributes else namespace


def tracer() -> trace.Tracer:
    """bentochain's tracer, from BentoML's provider: its spans join the request's trace."""
    return _bentoml_provider().get_tracer("bentochain")


def _bentoml_provider() -> trace.TracerProvider:
    """The tracer provider BentoML made for this process (one per worker)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    provider: trace.TracerProvider = BentoMLContainer.tracer_provider.get()
    return provider
