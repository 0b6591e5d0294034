"""The SQS job queue and its dead-letter queue (boto3; ``AWS_ENDPOINT_URL`` honoured)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class Message:
    body: str
    receipt: str
    message_id: str
    receive_count: int


class SqsQueue:
    """One SQS queue; its DLQ is read from the queue's redrive policy.

    Parameters
    ----------
    url : str
        Queue URL (``QUEUE_URL``).
    """

    def __init__(self, url: str, client=None):
        import boto3

        self.url = url
        self.sqs = client or boto3.client("sqs")
        self._dlq_url: str | None = None

    def receive(self, max_messages: int, wait_s: int = 20,
                visibility_s: int | None = None) -> list[Message]:
        """Long-poll for up to ``max_messages`` (1-10) messages."""
        if max_messages < 1:
            return []
        kwargs = {"QueueUrl": self.url, "MaxNumberOfMessages": min(10, max_messages),
                  "WaitTimeSeconds": wait_s, "MessageSystemAttributeNames":
                  ["ApproximateReceiveCount"], "MessageAttributeNames": ["All"]}
        if visibility_s is not None:
            kwargs["VisibilityTimeout"] = visibility_s
        resp = self.sqs.receive_message(**kwargs)
        return [Message(m["Body"], m["ReceiptHandle"], m["MessageId"],
                        int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)))
                for m in resp.get("Messages", [])]

    def send(self, body: dict | str, delay_s: int = 0, url: str | None = None,
             attributes: dict | None = None) -> str:
        kwargs = {"QueueUrl": url or self.url,
                  "MessageBody": body if isinstance(body, str) else json.dumps(body),
                  "DelaySeconds": delay_s}
        if attributes:
            kwargs["MessageAttributes"] = {k: {"DataType": "String", "StringValue": str(v)[:1000]}
                                           for k, v in attributes.items()}
        return self.sqs.send_message(**kwargs)["MessageId"]

    def delete(self, receipt: str, url: str | None = None) -> None:
        self.sqs.delete_message(QueueUrl=url or self.url, ReceiptHandle=receipt)

    def set_visibility(self, receipt: str, seconds: int) -> None:
        self.sqs.change_message_visibility(QueueUrl=self.url, ReceiptHandle=receipt,
                                           VisibilityTimeout=int(seconds))

    @property
    def dlq_url(self) -> str:
        if self._dlq_url is None:
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.url, AttributeNames=["RedrivePolicy"])["Attributes"]
            if "RedrivePolicy" not in attrs:
                raise ValueError(f"queue {self.url} has no redrive policy (no dead-letter "
                                 "queue); create it with `ray-app provision`")
            arn = json.loads(attrs["RedrivePolicy"])["deadLetterTargetArn"]
            self._dlq_url = self.sqs.get_queue_url(QueueName=arn.split(":")[-1])["QueueUrl"]
        return self._dlq_url

    def dead_letter(self, msg: Message, reason: str) -> None:
        """Move a message to the DLQ now (with its reason), then delete it here."""
        self.send(msg.body, url=self.dlq_url, attributes={"reason": reason})
        self.delete(msg.receipt)

    def list_dead(self, max_messages: int = 10, polls: int = 5) -> list[tuple[Message, str]]:
        """Peek at up to ``max_messages`` dead letters with their reasons.

        Received with visibility 0, so peeking hides nothing (a redrive right after sees
        them); SQS samples servers, so a few polls are merged, de-duplicated by message id.
        """
        seen: dict[str, tuple[Message, str]] = {}
        for _ in range(polls):
            resp = self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=0, VisibilityTimeout=0,
                                            MessageAttributeNames=["All"])
            for m in resp.get("Messages", []):
                reason = m.get("MessageAttributes", {}).get("reason", {}).get("StringValue", "")
                seen.setdefault(m["MessageId"], (Message(m["Body"], m["ReceiptHandle"],
                                                         m["MessageId"], 0), reason))
            if len(seen) >= max_messages:
                break
        return list(seen.values())[:max_messages]

    def redrive(self, max_messages: int = 10, messages: list[Message] | None = None) -> int:
        """Move dead letters back to the main queue: the given ones, or up to
        ``max_messages`` of whatever is there."""
        if messages is not None:
            for m in messages:
                self.send(m.body)
                self.delete(m.receipt, url=self.dlq_url)
            return len(messages)
        moved = 0
        while moved < max_messages:
            resp = self.sqs.receive_message(QueueUrl=self.dlq_url,
                                            MaxNumberOfMessages=min(10, max_messages - moved),
                                            WaitTimeSeconds=1)
            batch = resp.get("Messages", [])
            if not batch:
                break
            for m in batch:
                self.send(m["Body"])
                self.delete(m["ReceiptHandle"], url=self.dlq_url)
                moved += 1
        return moved
