"""/v1/methods and /v1/models: what can be explained, and with what."""
from __future__ import annotations

from flask import current_app, g, request
from flask.views import MethodView

from service import models, registry
from service.api.base import Blueprint, runtime
from service.api.schemas import (
    MethodListSchema,
    ModelDeleteQuery,
    ModelFormSchema,
    ModelListSchema,
    ModelPathSchema,
    ModelSchema,
)
from service.errors import Problem

blp = Blueprint("catalog", __name__, url_prefix="/v1", description="Methods and models")


@blp.route("/methods")
@blp.response(200, MethodListSchema)
@blp.problems()
def list_methods():
    """Every method with its parameters (JSON schema with defaults) and the model capabilities it requires."""
    return {"methods": method_catalog()}


def method_catalog() -> list[dict]:
    """The methods as /v1/methods lists them (the web UI's submit form is built from the same list)."""
    from worker.methods import registry

    converter = current_app.extensions["lantern.api"].ma_plugin.converter
    return [
        {"name": m.name, "summary": m.summary, "params": converter.schema2jsonschema(m.params),
         "needs_head": m.needs_head, "requires": sorted(m.requires.all_of),
         "requires_one_of": list(m.requires.any_of), "takes_layers": m.takes_layers, "tensors": list(m.tensors),
         "sanity": m.sanity}
        for m in registry().values()]


@blp.route("/models")
class Models(MethodView):
    @blp.response(200, ModelListSchema)
    @blp.problems()
    def get(self):
        """The zoo models and the caller's registered models."""
        with runtime().db.session() as s:
            return {"models": models.listing(s, g.caller.tenant_id)}

    @blp.response(201, ModelSchema)
    @blp.alt_response(200, description="this exact revision was already registered under this name")
    @blp.problems(400, 403, 409, 413, 415)  # 403: server paths disabled or outside the root; 409: a zoo name
    @blp.doc(requestBody={"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["name", "files"], "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "the bundle's files; each file name is its path inside the bundle"}}}},
        "application/json": {"schema": ModelPathSchema},
    }})
    def post(self):
        """Register a model bundle (config JSON + safetensors + vocabulary/tokenizer; never pickle).

        Validated on upload: format, safety rules, and one forward pass with the weights. Each revision is the
        sha256 of the bundle's files and is immutable; registering new files under a name adds a revision."""
        rt = runtime()
        request.max_content_length = rt.settings.max_upload_bytes
        parser = blp.ARGUMENTS_PARSER
        if request.mimetype == "multipart/form-data":
            name = parser.parse(ModelFormSchema, request, location="form")["name"]
            files = {f.filename or "": f.read() for f in request.files.getlist("files")}
            with registry.Staging(files) as bundle:
                row, created = _register(rt, name, bundle)
        elif request.is_json:
            body = parser.parse(ModelPathSchema, request, location="json")
            row, created = _register(rt, body["name"], registry.server_path(body["path"], rt.settings.model_root))
        else:
            raise Problem(415, "Unsupported media type",
                          "send multipart/form-data with 'name' and 'files', or JSON {name, path}")
        doc = {**row.card, "name": row.name, "revision": row.revision, "zoo": False,
               "created_at": row.created_at.isoformat()}
        return doc, 201 if created else 200, {"Location": f"/v1/models/{row.name}"}


def _register(rt, name: str, bundle):
    with rt.db.session() as s:
        return registry.register(s, rt.store, g.caller.tenant_id, name, bundle)


@blp.route("/models/<model:name>")
class ModelByName(MethodView):
    @blp.response(200, ModelSchema)
    @blp.problems(404)
    def get(self, name: str):
        """Labels, layer names, attention and gate names, and the methods that apply."""
        rt = runtime()
        with rt.db.session() as s:
            ref = models.resolve(s, g.caller.tenant_id, name)
        if ref.zoo:
            from worker.models import model_card

            return {**model_card(ref.name), "name": ref.name, "revision": ref.revision}
        return {**rt.adapters.get(ref).describe(), "name": ref.name, "revision": ref.revision, "zoo": False}

    @blp.arguments(ModelDeleteQuery, location="query")
    @blp.response(204)
    @blp.problems(404, 409)  # 409: a zoo model, or a queued or running job uses it
    def delete(self, query: dict, name: str):
        """Delete a registered model (one revision, or all of the name) with its stored files."""
        rt = runtime()
        with rt.db.session() as s:
            registry.delete_model(s, rt.store, g.caller.tenant_id, name, query.get("revision"))
        return None
