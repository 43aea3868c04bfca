"""/v1/methods and /v1/models: what can be explained, and with what."""
from __future__ import annotations

from flask import current_app, g
from flask_smorest import Blueprint

from service import models
from service.api.schemas import MethodListSchema, ModelListSchema, ModelSchema
from service.app import runtime

blp = Blueprint("catalog", __name__, url_prefix="/v1", description="Methods and models")


@blp.route("/methods")
@blp.response(200, MethodListSchema)
def list_methods():
    """Every method with its parameters (JSON schema with defaults)."""
    from worker.methods import registry

    converter = current_app.extensions["lantern.api"].ma_plugin.converter
    return {"methods": [
        {"name": m.name, "summary": m.summary, "params": converter.schema2jsonschema(m.params),
         "needs_head": m.needs_head, "takes_layers": m.takes_layers, "tensors": list(m.tensors),
         "sanity": m.sanity}
        for m in registry().values()]}


@blp.route("/models")
@blp.response(200, ModelListSchema)
def list_models():
    """The zoo models and the caller's registered models."""
    with runtime().db.session() as s:
        return {"models": models.listing(s, g.caller.tenant_id)}


@blp.route("/models/<name>")
@blp.response(200, ModelSchema)
def describe_model(name: str):
    """Labels, layer names, attention and gate names, and the methods that apply."""
    rt = runtime()
    with rt.db.session() as s:
        ref = models.resolve(s, g.caller.tenant_id, name)
    return {**rt.adapters.get(ref).describe(), "name": ref.name, "revision": ref.revision, "zoo": ref.zoo}
