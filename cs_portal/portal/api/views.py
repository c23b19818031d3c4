"""JSON API: the customer channel (API key) and agent replies (agent token or session)."""

from __future__ import annotations

from urllib.parse import urlencode

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cs_portal.portal import selectors, services
from cs_portal.portal.api.auth import ApiClientAuthentication, IsAgent, IsApiClient
from cs_portal.portal.api.serializers import (
    AgentMessageInput,
    ConversationInput,
    ConversationOutput,
    CustomerMessageOutput,
    MessageInput,
    MessagePageQuery,
)
from cs_portal.portal.tokens import HashedTokenAuthentication

ERROR = OpenApiResponse(description='{"error": {"code": "...", "message": "..."}}')


class CustomerChannelView(APIView):
    authentication_classes = [ApiClientAuthentication]
    permission_classes = [IsApiClient]

    def conversation(self, request: Request, conversation_id: int):
        return selectors.conversation_get_for_client(api_client=request.auth, conversation_id=conversation_id)


class ConversationListView(CustomerChannelView):
    @extend_schema(
        summary="Open a conversation for a customer",
        request=ConversationInput,
        responses={201: ConversationOutput, 400: ERROR, 401: ERROR},
    )
    def post(self, request: Request) -> Response:
        data = ConversationInput(data=request.data)
        data.is_valid(raise_exception=True)
        customer = data.validated_data["customer"]
        conversation = services.conversation_create(
            api_client=request.auth,
            customer_name=customer["name"],
            customer_email=customer["email"],
            external_id=customer["external_id"],
            language=data.validated_data.get("language"),
            subject=data.validated_data["subject"],
        )
        return Response(ConversationOutput(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailView(CustomerChannelView):
    @extend_schema(summary="A conversation", responses={200: ConversationOutput, 401: ERROR, 404: ERROR})
    def get(self, request: Request, conversation_id: int) -> Response:
        return Response(ConversationOutput(self.conversation(request, conversation_id)).data)


class MessageListView(CustomerChannelView):
    @extend_schema(
        summary="The conversation's messages as the customer sees them, with their translations",
        description=(
            "The latest messages, oldest first, in the order they were sent (a draft written earlier may be "
            "sent later; drafts are not listed). When earlier messages are left, the answer's `Link` header "
            "has the next page's address (`rel=\"prev\"`)."
        ),
        parameters=[MessagePageQuery],
        responses={200: CustomerMessageOutput(many=True), 400: ERROR, 401: ERROR, 404: ERROR},
    )
    def get(self, request: Request, conversation_id: int) -> Response:
        conversation = self.conversation(request, conversation_id)
        query = MessagePageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        limit, before = query.validated_data["limit"], query.validated_data.get("before")
        messages, earlier = selectors.messages_delivered_page(conversation=conversation, limit=limit, before=before)
        response = Response(CustomerMessageOutput(messages, many=True).data)
        if earlier:
            address = request.build_absolute_uri(request.path) + "?" + urlencode({"before": messages[0].pk, "limit": limit})
            response["Link"] = f'<{address}>; rel="prev"'
        return response

    @extend_schema(
        summary="Post a customer message; it is translated into the agent's language",
        request=MessageInput,
        responses={201: CustomerMessageOutput, 400: ERROR, 401: ERROR, 404: ERROR},
    )
    def post(self, request: Request, conversation_id: int) -> Response:
        conversation = self.conversation(request, conversation_id)
        data = MessageInput(data=request.data)
        data.is_valid(raise_exception=True)
        message = services.message_create_from_customer(
            conversation=conversation, text=data.validated_data["text"], language=data.validated_data.get("language")
        )
        message = selectors.message_list(conversation=conversation).get(pk=message.pk)
        return Response(CustomerMessageOutput(message).data, status=status.HTTP_201_CREATED)


class AgentMessageView(APIView):
    authentication_classes = [HashedTokenAuthentication, SessionAuthentication]
    permission_classes = [IsAgent]

    @extend_schema(
        summary="Post an agent reply in the agent's language; it is translated for the customer",
        request=AgentMessageInput,
        responses={201: CustomerMessageOutput, 400: ERROR, 401: ERROR, 403: ERROR, 404: ERROR},
    )
    def post(self, request: Request, conversation_id: int) -> Response:
        agent = request.user.agent
        conversation = selectors.conversation_get_for_agent(agent=agent, conversation_id=conversation_id)
        data = AgentMessageInput(data=request.data)
        data.is_valid(raise_exception=True)
        message = services.message_create_from_agent(conversation=conversation, agent=agent, text=data.validated_data["text"])
        message = selectors.message_list(conversation=conversation).get(pk=message.pk)
        return Response(CustomerMessageOutput(message).data, status=status.HTTP_201_CREATED)
