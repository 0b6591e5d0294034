"""Job queues with a dead-letter queue: SQS (boto3; ``AWS_ENDPOINT_URL`` honoured), and a
SQLite twin with the same behaviour for the embedded local mode (no AWS).

Both: at-least-once delivery, a visibility timeout (a received message is hidden until it is
deleted or its visibility runs out), a receive count, and a redrive policy (a message
received more than ``max_receives`` times goes to the dead-letter queue).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .sqlite_tx import ImmediateTx


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
        from . import aws

        self.url = url
        self.sqs = client or aws.client("sqs")
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

    def depth(self) -> dict:
        """Approximate counts (SQS's own): visible, in flight (received or delayed), and
        dead letters in its DLQ."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        a = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        dead = self.sqs.get_queue_attributes(
            QueueUrl=self.dlq_url, AttributeNames=names[:1])["Attributes"]
        return {"visible": int(a.get(names[0], 0)),
                "in_flight": int(a.get(names[1], 0)) + int(a.get(names[2], 0)),
                "dead": int(dead.get(names[0], 0))}

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


class SqliteQueue:
    """The local queue: a SQLite file (``$RAY_APP_HOME/queue.db``) shared by ``ray-app
    submit`` and the local driver (``ray-app consume``); the SQS semantics the driver relies
    on (visibility, receive counts, redrive to a DLQ after ``max_receives``) hold.

    Parameters
    ----------
    path : str or Path
        The database file (created with its folder).
    visibility_s : int
        Default visibility timeout of a received message.
    max_receives : int
        The redrive policy's maxReceiveCount.
    """

    def __init__(self, path: str | Path, visibility_s: int = 120, max_receives: int = 3):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite://{self.path}"
        self.dlq_url = f"{self.url}#dlq"
        self.visibility_s = int(visibility_s)
        self.max_receives = int(max_receives)
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, body TEXT, "
                      "visible_at REAL, receive_count INTEGER, receipt TEXT, sent_at REAL)")
            c.execute("CREATE TABLE IF NOT EXISTS dead (id TEXT PRIMARY KEY, body TEXT, "
                      "reason TEXT, dead_at REAL)")

    def _tx(self):
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        return ImmediateTx(conn, close=True)

    def send(self, body: dict | str, delay_s: int = 0, url: str | None = None,
             attributes: dict | None = None) -> str:
        text = body if isinstance(body, str) else json.dumps(body)
        mid = uuid.uuid4().hex
        now = time.time()
        with self._tx() as c:
            if url == self.dlq_url:
                c.execute("INSERT INTO dead VALUES (?,?,?,?)",
                          (mid, text, (attributes or {}).get("reason", ""), now))
            else:
                c.execute("INSERT INTO messages VALUES (?,?,?,?,?,?)",
                          (mid, text, now + delay_s, 0, None, now))
        return mid

    def receive(self, max_messages: int, wait_s: int = 20,
                visibility_s: int | None = None) -> list[Message]:
        """Poll (every 0.2 s, up to ``wait_s``) for up to ``max_messages`` visible messages."""
        if max_messages < 1:
            return []
        deadline = time.monotonic() + wait_s
        hide = self.visibility_s if visibility_s is None else int(visibility_s)
        while True:
            out = []
            now = time.time()
            with self._tx() as c:
                rows = c.execute("SELECT id, body, receive_count FROM messages WHERE "
                                 "visible_at <= ? ORDER BY sent_at LIMIT ?",
                                 (now, min(10, max_messages))).fetchall()
                for mid, body, count in rows:
                    if count >= self.max_receives:  # the redrive policy
                        c.execute("INSERT OR REPLACE INTO dead VALUES (?,?,?,?)",
                                  (mid, body, f"received {count} times (maxReceiveCount "
                                              f"{self.max_receives})", now))
                        c.execute("DELETE FROM messages WHERE id=?", (mid,))
                        continue
                    receipt = uuid.uuid4().hex
                    c.execute("UPDATE messages SET receive_count=?, receipt=?, visible_at=? "
                              "WHERE id=?", (count + 1, receipt, now + hide, mid))
                    out.append(Message(body, receipt, mid, count + 1))
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(0.2)

    def delete(self, receipt: str, url: str | None = None) -> None:
        with self._tx() as c:
            if url == self.dlq_url:
                c.execute("DELETE FROM dead WHERE id=?", (receipt,))
            else:
                c.execute("DELETE FROM messages WHERE receipt=?", (receipt,))

    def set_visibility(self, receipt: str, seconds: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE messages SET visible_at=? WHERE receipt=?",
                      (time.time() + int(seconds), receipt))

    def dead_letter(self, msg: Message, reason: str) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO dead VALUES (?,?,?,?)",
                      (msg.message_id, msg.body, reason, time.time()))
            c.execute("DELETE FROM messages WHERE receipt=?", (msg.receipt,))

    def list_dead(self, max_messages: int = 10, polls: int = 5) -> list[tuple[Message, str]]:
        with self._tx() as c:
            rows = c.execute("SELECT id, body, reason FROM dead ORDER BY dead_at LIMIT ?",
                             (max_messages,)).fetchall()
        return [(Message(body, mid, mid, 0), reason) for mid, body, reason in rows]

    def redrive(self, max_messages: int = 10, messages: list[Message] | None = None) -> int:
        chosen = messages if messages is not None else [m for m, _ in
                                                         self.list_dead(max_messages)]
        for m in chosen:
            self.send(m.body)
            self.delete(m.receipt, url=self.dlq_url)
        return len(chosen)

    def depth(self) -> dict:
        """Counts of visible, in-flight and dead messages."""
        now = time.time()
        with self._tx() as c:
            visible = c.execute("SELECT COUNT(*) FROM messages WHERE visible_at <= ?",
                                (now,)).fetchone()[0]
            total = c.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            dead = c.execute("SELECT COUNT(*) FROM dead").fetchone()[0]
        return {"visible": visible, "in_flight": total - visible, "dead": dead}


#: Jobs of at least this priority go to the high-priority queue, which drivers drain first.
HIGH_PRIORITY = 5


def _priority(body) -> int:
    try:
        msg = json.loads(body) if isinstance(body, str) else body
        p = msg.get("priority", 0) if isinstance(msg, dict) else 0
        return p if isinstance(p, int) and not isinstance(p, bool) else 0
    except (ValueError, TypeError):
        return 0


class PriorityQueues:
    """A high-priority queue beside the normal one, used as one queue.

    ``send`` puts a job of priority >= :data:`HIGH_PRIORITY` on ``high``; ``receive`` takes
    from ``high`` first and fills the remaining slots from ``normal`` (long-polling it only
    when ``high`` had nothing). A received message's receipt names its queue, so deleting,
    hiding and dead-lettering go to the right one. Dead letters of both are listed and
    redriven (back to the queue their priority says).
    """

    def __init__(self, high, normal):
        self.high, self.normal = high, normal
        self.queues = (high, normal)
        self.url = normal.url

    @property
    def dlq_url(self) -> str:
        return self.normal.dlq_url

    def send(self, body: dict | str, delay_s: int = 0, url: str | None = None,
             attributes: dict | None = None) -> str:
        if url is not None:  # an explicit destination (a dead-letter queue)
            return self.normal.send(body, delay_s, url=url, attributes=attributes)
        q = self.high if _priority(body) >= HIGH_PRIORITY else self.normal
        return q.send(body, delay_s)

    def receive(self, max_messages: int, wait_s: int = 20,
                visibility_s: int | None = None) -> list[Message]:
        out = [Message(m.body, f"0|{m.receipt}", m.message_id, m.receive_count)
               for m in self.high.receive(max_messages, wait_s=0, visibility_s=visibility_s)]
        if len(out) < max_messages:
            out += [Message(m.body, f"1|{m.receipt}", m.message_id, m.receive_count)
                    for m in self.normal.receive(max_messages - len(out),
                                                 wait_s=0 if out else wait_s,
                                                 visibility_s=visibility_s)]
        return out

    def _split(self, receipt: str):
        i, _, r = receipt.partition("|")
        return self.queues[int(i)], r

    def delete(self, receipt: str, url: str | None = None) -> None:
        q, r = self._split(receipt)
        q.delete(r, url=q.dlq_url if url is not None else None)

    def set_visibility(self, receipt: str, seconds: int) -> None:
        q, r = self._split(receipt)
        q.set_visibility(r, seconds)

    def dead_letter(self, msg: Message, reason: str) -> None:
        q, r = self._split(msg.receipt)
        q.dead_letter(Message(msg.body, r, msg.message_id, msg.receive_count), reason)

    def list_dead(self, max_messages: int = 10, polls: int = 5) -> list[tuple[Message, str]]:
        out, seen = [], set()
        for i, q in enumerate(self.queues):
            if q.dlq_url in seen:  # SQS: both queues dead-letter into one DLQ
                continue
            seen.add(q.dlq_url)
            out += [(Message(m.body, f"{i}|{m.receipt}", m.message_id, m.receive_count), why)
                    for m, why in q.list_dead(max_messages - len(out), polls=polls)]
            if len(out) >= max_messages:
                break
        return out

    def redrive(self, max_messages: int = 10, messages: list[Message] | None = None) -> int:
        chosen = messages if messages is not None else [m for m, _ in
                                                         self.list_dead(max_messages)]
        for m in chosen:
            q, r = self._split(m.receipt)
            self.send(m.body)  # back to the queue its priority says
            q.delete(r, url=q.dlq_url)
        return len(chosen)

    def depth(self) -> dict:
        """Both queues' counts summed, dead letters counted once per DLQ (SQS: both queues
        share one), and each queue's own under ``high`` and ``normal``."""
        parts = {"high": self.high.depth(), "normal": self.normal.depth()}
        out = {k: parts["high"][k] + parts["normal"][k] for k in ("visible", "in_flight")}
        shared = self.high.dlq_url == self.normal.dlq_url
        out["dead"] = parts["normal"]["dead"] + (0 if shared else parts["high"]["dead"])
        return {**out, **parts}
