from django.urls import path

from cs_portal.portal.api import views

urlpatterns = [
    path("conversations", views.ConversationListView.as_view(), name="api-conversations"),
    path("conversations/<int:conversation_id>", views.ConversationDetailView.as_view(), name="api-conversation"),
    path("conversations/<int:conversation_id>/messages", views.MessageListView.as_view(), name="api-messages"),
    path(
        "agent/conversations/<int:conversation_id>/messages",
        views.AgentMessageView.as_view(),
        name="api-agent-messages",
    ),
]
