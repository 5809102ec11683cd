"""Every place the bot reaches into botbuilder's or msrest's private internals, and why.

Private means a name with a leading underscore, or an undocumented attribute set from outside.
Nothing else in the project touches them (tests/test_layering.py says so); the Agents SDK edge
(`bot.teams.agents_edge`) needs none of them. Dropping botbuilder drops this module.

- `OpenIdMetadata` (`_OpenIdMetadata`): botbuilder's signing-key cache, subclassed by
  `bot.teams.edge.SigningKeys` because the stock one fetches keys with a blocking
  `requests.get` on the event loop;
- `install_signing_keys` (`JwtTokenExtractor.metadataCache`): botbuilder's token validation
  finds its key cache in this class attribute by URL and takes no cache as a parameter;
- `set_operations_serializer` (`ConnectorClient.conversations._serialize`): the operations keep
  their msrest `Serializer` privately, with no parameter for ours (which skips msrest's rebuild
  and validation of every card, the largest cost of a reply);
- `serialize_model` (`Serializer._serialize`): the step of msrest's `body()` that only
  serializes — what ours keeps of it;
- `RepairedActivityHandler`: three private hooks of `ActivityHandler` overridden, and
  `_InvokeResponseException` raised, because the stock ones answer HTTP 500 or crash (below).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from botbuilder.core import ActivityHandler, InvokeResponse
from botbuilder.core.activity_handler import _InvokeResponseException
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse, AdaptiveCardInvokeValue
from botframework.connector.auth.jwt_token_extractor import JwtTokenExtractor, _OpenIdMetadata
from msrest import Serializer

#: botbuilder's signing-key cache for one OpenID metadata URL (see the module docstring).
OpenIdMetadata = _OpenIdMetadata


def install_signing_keys(url: str, keys: Any) -> None:
    """Make `keys` the cache botbuilder's token validation uses for `url`."""
    JwtTokenExtractor.metadataCache[url] = keys


def set_operations_serializer(client: Any, serializer: Serializer) -> None:
    """The serializer a connector client's conversation operations write bodies with."""
    client.conversations._serialize = serializer


def serialize_model(serializer: Serializer, data: Any, data_type: str, **kwargs: Any) -> Any:
    """msrest's serialization of a model as it is: no rebuild, no validation."""
    return serializer._serialize(data, data_type, **kwargs)


class RepairedActivityHandler(ActivityHandler):  # type: ignore[misc]
    """botbuilder's ActivityHandler with the private hooks of its card invokes repaired."""

    @staticmethod
    def _create_invoke_response(body: object = None) -> InvokeResponse:
        # The stock one serializes the response with msrest, which walks every node of the
        # card to make this same dict.
        if isinstance(body, AdaptiveCardInvokeResponse) and isinstance(body.value, dict):
            payload = {"statusCode": body.status_code, "type": body.type, "value": body.value}
            return InvokeResponse(
                status=int(HTTPStatus.OK),
                body={k: v for k, v in payload.items() if v is not None},
            )
        return ActivityHandler._create_invoke_response(body)

    def _get_adaptive_card_invoke_value(self, activity: Activity) -> AdaptiveCardInvokeValue:
        # The stock check calls .get() on the action: an action that is a list or a string
        # (a tampered client) would crash the turn instead of getting its 400.
        value = activity.value
        action = value.get("action") if isinstance(value, Mapping) else None
        if action is not None and not isinstance(action, Mapping):
            raise _InvokeResponseException(
                HTTPStatus.BAD_REQUEST,
                self._create_adaptive_card_invoke_error_response(
                    HTTPStatus.BAD_REQUEST, "BadRequest", "The action property is not an object"
                ),
            )
        found: AdaptiveCardInvokeValue = super()._get_adaptive_card_invoke_value(activity)
        return found

    def _create_adaptive_card_invoke_error_response(
        self, status_code: HTTPStatus, code: str, message: str
    ) -> AdaptiveCardInvokeResponse:
        # The stock one puts an Exception object in `value`, which cannot be serialized (the
        # malformed invoke would get HTTP 500); Universal Actions expect {code, message}.
        return AdaptiveCardInvokeResponse(
            status_code=int(status_code),
            type="application/vnd.microsoft.error",
            value={"code": code, "message": message},
        )
