"""Marshmallow schemas of the HTTP contract (docs/api.md). Where the server checks more than a field's type
(one of several shapes, not blank), the OpenAPI metadata says the same, so the document admits only what the
server accepts."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from service.domain import JOB_STATES

SCORES = ("logit", "probability", "log_probability")
FAITHFULNESS = ("full", "basic", "none")  # the engine's worker.methods.faithfulness.LEVELS; "full" the default
STATUSES = tuple(JOB_STATES)


NOT_BLANK = {"pattern": r"\S"}  # at least one non-whitespace character, as `.strip()` decides
ZOO_EXAMPLE = {"examples": ["minilm-rt"], "description": "a model name; see GET /v1/models"}


def exactly_one_of(*shapes: tuple[str, ...]) -> dict:
    """JSON Schema for "exactly one of these field groups": each group's fields, and none of the others'."""
    every = {name for shape in shapes for name in shape}
    return {"oneOf": [{"required": list(shape), "not": {"anyOf": [{"required": [other]}
                                                                 for other in sorted(every - set(shape))]}}
                      for shape in shapes]}


class Strict(ma.Schema):
    class Meta:
        unknown = ma.RAISE


class InputsSchema(Strict):
    text = ma.fields.String(metadata={"description": "a single text", **NOT_BLANK})
    premise = ma.fields.String(metadata=NOT_BLANK)
    hypothesis = ma.fields.String(metadata=NOT_BLANK)
    prompt = ma.fields.String(metadata={"description": "a generative model's prompt", **NOT_BLANK})
    continuation = ma.fields.String(validate=validate.Length(1), metadata={
        "description": "with a prompt: the continuation to explain (forced decoding), tokenised on its own"})

    @ma.validates_schema
    def one_shape(self, data: dict, **_: object) -> None:
        if "prompt" in data or "continuation" in data:
            if set(data) - {"prompt", "continuation"} or "prompt" not in data:
                raise ma.ValidationError("give a prompt (and optionally a continuation) alone")
            if not data["prompt"].strip():
                raise ma.ValidationError("must not be empty", "prompt")
        elif "text" in data:
            if "premise" in data or "hypothesis" in data:
                raise ma.ValidationError("give either text or premise + hypothesis, not both")
            if not data["text"].strip():
                raise ma.ValidationError("must not be empty", "text")
        elif "premise" in data and "hypothesis" in data:
            for name in ("premise", "hypothesis"):
                if not data[name].strip():
                    raise ma.ValidationError("must not be empty", name)
        else:
            raise ma.ValidationError("give text, premise and hypothesis, or a prompt")


class GenerateSchema(Strict):
    """A generative model's decoding: greedy unless do_sample (then seeded by the request's seed)."""

    max_new_tokens = ma.fields.Integer(load_default=16, strict=True, validate=validate.Range(1, 100_000))
    do_sample = ma.fields.Boolean(load_default=False)


class InputsField(ma.fields.Nested):
    """A job's `inputs`: one input, or a list of them (a batch job), each loaded by the nested schema; a list's
    errors are keyed by position, as marshmallow's List keys them."""

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        if not isinstance(value, list):
            return super()._deserialize(value, attr, data, partial, **kwargs)
        if not value:
            raise ma.ValidationError("give at least one input")
        items, errors = [], {}
        for position, one in enumerate(value):
            try:
                items.append(super()._deserialize(one, attr, data, partial, **kwargs))
            except ma.ValidationError as e:
                errors[position] = e.messages
        if errors:
            raise ma.ValidationError(errors)
        return items


class ExplanationFields(Strict):
    """What a job and an audit ask of the engine: methods, layers, target, score, params, seed, faithfulness."""

    methods = ma.fields.List(ma.fields.String(validate=validate.Length(1, 50)), required=True,
                             validate=validate.Length(1, 8), metadata={"uniqueItems": True})
    layers = ma.fields.List(ma.fields.String(validate=validate.Length(1, 100)), validate=validate.Length(1, 64),
                            load_default=None)
    target = ma.fields.String(load_default="predicted", validate=validate.Length(1, 100))
    score = ma.fields.String(load_default="logit", validate=validate.OneOf(SCORES))
    params = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Dict(), load_default=dict)
    seed = ma.fields.Integer(load_default=0, validate=validate.Range(0, 2**31 - 1), strict=True)
    faithfulness = ma.fields.String(validate=validate.OneOf(FAITHFULNESS), metadata={
        "default": FAITHFULNESS[0],
        "description": "the faithfulness work per token-scoring method: full (AOPC, random, lift and the normalised "
                       "AOPC's bound search), basic (no bound search: normalized is null), none (no faithfulness)"})

    @ma.validates_schema
    def distinct_methods(self, data: dict, **_: object) -> None:
        if len(set(data.get("methods", []))) != len(data.get("methods", [])):
            raise ma.ValidationError("each method may appear once", "methods")

    @ma.post_load
    def default_faithfulness_unsaid(self, data: dict, **_: object) -> dict:
        """"full" said or not is one request: the loaded body (stored, and hashed for Idempotency-Key replays) is
        then the one it was before the option existed."""
        if data.get("faithfulness") == FAITHFULNESS[0]:
            del data["faithfulness"]
        return data


class JobRequestSchema(ExplanationFields):
    model = ma.fields.String(required=True, validate=validate.Length(1, 100), metadata=ZOO_EXAMPLE)
    compare_with = ma.fields.List(ma.fields.String(validate=validate.Length(1, 100), metadata=ZOO_EXAMPLE),
                                  validate=validate.Length(max=3), load_default=list)
    inputs = InputsField(InputsSchema, required=True,
                              metadata=exactly_one_of(("text",), ("premise", "hypothesis"), ("prompt",)))
    generate = ma.fields.Nested(GenerateSchema)
    contrast = ma.fields.Raw(metadata={
        "description": "generative models: the token to explain the generated one against (one token, or one per "
                       "step of a continuation)",
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4096}]})

    @ma.validates("contrast")
    def contrast_shape(self, value: object, **_: object) -> None:
        if value is None:
            return
        if isinstance(value, str):
            ok = bool(value)
        else:
            ok = isinstance(value, list) and 0 < len(value) <= 4096 and all(isinstance(v, str) and v for v in value)
        if not ok:
            raise ma.ValidationError("a non-empty token string, or a list of them")


class ExplainInstancesSchema(ExplanationFields):
    """POST /v1/models/{name}:explain, KServe V1's shape: instances in, explanations out."""

    instances = ma.fields.List(ma.fields.Nested(InputsSchema), required=True, validate=validate.Length(min=1),
                               metadata={"description": "the inputs: one makes a single job, several a batch job "
                                                        "(at most LANTERN_MAX_BATCH_INPUTS)"})
    timeout = ma.fields.Float(load_default=10.0, validate=validate.Range(0, 3600), metadata={
        "description": "seconds to wait for the result (at most LANTERN_SYNC_TIMEOUT_CAP); not done by then: 202 "
                       "with the job's Location, as POST /v1/jobs answers"})


class IdempotencyHeaders(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # every other header

    key = ma.fields.String(data_key="Idempotency-Key",
                           validate=[validate.Length(1, 200), validate.Regexp(r"^[!-~]+$")],
                           metadata={"description": "replays the first job made with this key (visible ASCII, "
                                                    "at most 200 characters)"})


class ArtifactSchema(ma.Schema):
    name = ma.fields.String()
    content_type = ma.fields.String()
    bytes = ma.fields.Integer()
    sha256 = ma.fields.String()
    url = ma.fields.String()


class JobSchema(ma.Schema):
    id = ma.fields.String()
    status = ma.fields.String(validate=validate.OneOf(STATUSES))
    progress = ma.fields.Float()
    attempts = ma.fields.Integer()
    attempt_history = ma.fields.List(ma.fields.Dict(), metadata={"description": "each attempt: worker, device, "
                                                                                "start, end, outcome"})
    cancel_requested = ma.fields.Boolean()
    created_at = ma.fields.String()
    started_at = ma.fields.String(allow_none=True)
    finished_at = ma.fields.String(allow_none=True)
    timings = ma.fields.Dict()
    device = ma.fields.String(allow_none=True)
    error = ma.fields.Dict(allow_none=True, metadata={"description": "an RFC 9457 problem"})
    model = ma.fields.Dict()
    request = ma.fields.Dict()
    result = ma.fields.Raw(allow_none=True, metadata={"description": "docs/api.md result document"})
    compare = ma.fields.Raw()
    artifacts = ma.fields.List(ma.fields.Nested(ArtifactSchema))


class ExplanationsSchema(ma.Schema):
    explanations = ma.fields.List(ma.fields.Raw(), metadata={
        "description": "one result document per instance, in order (docs/api.md)"})
    job = ma.fields.Nested(JobSchema, metadata={"description": "the job that computed them"})


class JobListQuery(Strict):
    limit = ma.fields.Integer(load_default=20, validate=validate.Range(1, 100))
    cursor = ma.fields.String()
    status = ma.fields.String(validate=validate.OneOf(STATUSES))
    model = ma.fields.String()


class ModelDeleteQuery(Strict):
    revision = ma.fields.String(validate=validate.Regexp(r"^[0-9a-f]{64}$"), metadata={
        "description": "the revision to delete (sha256, 64 hex digits); without it, every revision of the name"})


class JobListSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(JobSchema))
    next_cursor = ma.fields.String(allow_none=True)


class MethodSchema(ma.Schema):
    name = ma.fields.String()
    summary = ma.fields.String()
    params = ma.fields.Dict()
    needs_head = ma.fields.Boolean(metadata={"description": "it explains a class: the model needs an output head"})
    requires = ma.fields.List(ma.fields.String(), metadata={
        "description": "model capabilities the method needs, all of them"})
    requires_one_of = ma.fields.List(ma.fields.String(), metadata={
        "description": "model capabilities of which the method needs at least one (empty: no such condition)"})
    takes_layers = ma.fields.Boolean()
    tensors = ma.fields.List(ma.fields.String())
    sanity = ma.fields.Dict()


class MethodListSchema(ma.Schema):
    methods = ma.fields.List(ma.fields.Nested(MethodSchema))


class ModelSchema(ma.Schema):
    name = ma.fields.String()
    revision = ma.fields.String()
    zoo = ma.fields.Boolean()
    created_at = ma.fields.String()
    labels = ma.fields.List(ma.fields.String(), allow_none=True)
    layers = ma.fields.List(ma.fields.String())
    attention = ma.fields.List(ma.fields.String())
    gates = ma.fields.List(ma.fields.String())
    methods = ma.fields.List(ma.fields.String())
    capabilities = ma.fields.List(ma.fields.String(), metadata={
        "description": "what the model offers the methods (head, self_attention, lrp_rules, …; docs/extending.md)"})
    description = ma.fields.String()
    license = ma.fields.String()
    source = ma.fields.String()
    metrics = ma.fields.Dict()


class ModelListSchema(ma.Schema):
    models = ma.fields.List(ma.fields.Nested(ModelSchema))


class ModelPathSchema(Strict):
    name = ma.fields.String(required=True, validate=validate.Length(1, 64))
    # relative, at most 16 parts of at most 255 characters: what a file system can name
    path = ma.fields.String(required=True, validate=validate.Regexp(r"^[^/]{1,255}(/[^/]{1,255}){0,15}/?$"),
                            metadata={"description": "a bundle directory, relative to the server's "
                                                     "LANTERN_MODEL_ROOT"})


class ModelFormSchema(Strict):
    name = ma.fields.String(required=True, validate=validate.Length(1, 64))


TEXT = {"type": "string", **NOT_BLANK}
CORPUS_ITEM = {  # as audits.check_item reads an item: text first, else premise + hypothesis; other fields ignored
    "type": "object",
    "anyOf": [{"required": ["text"], "properties": {"text": TEXT}},
              {"required": ["premise", "hypothesis"], "not": {"required": ["text"]},
               "properties": {"premise": TEXT, "hypothesis": TEXT}}],
}


class CorpusSchema(Strict):
    items = ma.fields.List(ma.fields.Dict(metadata=CORPUS_ITEM), validate=validate.Length(min=1),
                           metadata={"description": "[{text} | {premise, hypothesis}, label?]"})
    name = ma.fields.String(metadata={"description": "a built-in corpus, e.g. rt-test"})
    upload = ma.fields.String(metadata={"description": "an id from POST /v1/audits/uploads"})

    @ma.validates_schema
    def exactly_one(self, data: dict, **_: object) -> None:
        if len(data) != 1:
            raise ma.ValidationError("give exactly one of items, name, upload")


class AuditRequestSchema(ExplanationFields):
    OPENAPI = exactly_one_of(("model",), ("models",))  # schema-level: added to its component by document()
    model = ma.fields.String(validate=validate.Length(1, 100), metadata=ZOO_EXAMPLE)
    models = ma.fields.List(ma.fields.String(validate=validate.Length(1, 100), metadata=ZOO_EXAMPLE),
                            validate=validate.Length(1, 4), metadata={"uniqueItems": True})
    corpus = ma.fields.Nested(CorpusSchema, required=True, metadata=exactly_one_of(("items",), ("name",),
                                                                                   ("upload",)))
    sample = ma.fields.Integer(validate=validate.Range(1, 10**6), strict=True, load_default=None)
    batch_size = ma.fields.Integer(load_default=16, validate=validate.Range(1, 64), strict=True,
                                   metadata={"description": "items per worker pass (micro-batch)"})
    top_k = ma.fields.Integer(load_default=3, validate=validate.Range(1, 20), strict=True,
                              metadata={"description": "top words per item for the stop-word share"})
    concepts = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()),
                              load_default=dict, metadata={"description": "concept word lists for r_{i,c} (sigma)"})

    @ma.validates_schema
    def one_model_field(self, data: dict, **_: object) -> None:
        if ("model" in data) == ("models" in data):
            raise ma.ValidationError("give model or models, not both")
        if len(set(data.get("models", []))) != len(data.get("models", [])):
            raise ma.ValidationError("each model may appear once", "models")

    @ma.post_load
    def normalise(self, data: dict, **_: object) -> dict:
        data["models"] = data.pop("models", None) or [data.pop("model")]
        return data


class AuditSchema(ma.Schema):
    id = ma.fields.String()
    status = ma.fields.String(validate=validate.OneOf(STATUSES))
    progress = ma.fields.Float()
    counts = ma.fields.Dict()
    items_per_second = ma.fields.Float(allow_none=True)
    eta_seconds = ma.fields.Float(allow_none=True)
    models = ma.fields.List(ma.fields.String())
    methods = ma.fields.List(ma.fields.String())
    created_at = ma.fields.String()
    started_at = ma.fields.String(allow_none=True)
    finished_at = ma.fields.String(allow_none=True)
    request = ma.fields.Dict()
    aggregates = ma.fields.Dict(allow_none=True)
    error = ma.fields.Dict(allow_none=True)
    artifacts = ma.fields.List(ma.fields.Nested(ArtifactSchema))


class AuditListQuery(Strict):
    limit = ma.fields.Integer(load_default=20, validate=validate.Range(1, 100))
    cursor = ma.fields.String()
    status = ma.fields.String(validate=validate.OneOf(STATUSES))


class AuditListSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(AuditSchema))
    next_cursor = ma.fields.String(allow_none=True)


class UploadSchema(ma.Schema):
    upload = ma.fields.String()
    items = ma.fields.Integer()
    bytes = ma.fields.Integer()
    filename = ma.fields.String()


def document(spec) -> None:
    """Rules that apispec has no field for, added to the registered components: the schema-level "model or
    models", and the method and built-in corpus names (fixed registries in the code, so honest enums)."""
    from worker.data.corpora import CORPORA
    from worker.methods import registry

    schemas = spec.components.schemas
    schemas["AuditRequest"].update(AuditRequestSchema.OPENAPI)
    for name in ("JobRequest", "AuditRequest", "ExplainInstances"):
        schemas[name]["properties"]["methods"]["items"]["enum"] = sorted(registry())
    schemas["Corpus"]["properties"]["name"]["enum"] = sorted(CORPORA)
    single = schemas["JobRequest"]["properties"]["inputs"]
    schemas["ExplainInstances"]["properties"]["instances"]["items"] = single  # one input's shapes, as a job's
    schemas["JobRequest"]["properties"]["inputs"] = {"oneOf": [single, {
        "type": "array", "items": single, "minItems": 1,
        "description": "a batch job: each input explained on its own (at most LANTERN_MAX_BATCH_INPUTS)"}]}
