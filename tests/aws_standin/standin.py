#!/usr/bin/env python3
"""A local stand-in for the AWS services cdc-enricher calls, speaking their wire protocols.

Only the Python standard library. Starts on 127.0.0.1 (port from argv[1], 0 = any free port;
the address from argv[2]) and prints `PORT <n>` on its first line. The daemon reaches it only through `endpoint_url`.

- Comprehend (JSON 1.1, routed by X-Amz-Target): DetectSentiment, BatchDetectSentiment,
  BatchDetectEntities (capitalised words; all-caps ones are ORGANIZATION, others PERSON),
  BatchDetectKeyPhrases (words of 7 letters or more), BatchDetectDominantLanguage (fr if the
  text has French accents, else en), DetectPiiEntities (one document: e-mail addresses are
  EMAIL, runs of 7 or more digits PHONE).
  Real limits: 25 documents a batch, 5,000 UTF-8 bytes a document.
  Deterministic answers from a word list, so tests assert exact values; a document containing
  `[[reject]]` is answered with an INVALID_REQUEST item error (a poison row).
- Every request's SigV4 signature is checked against the test credentials.
- Control (not AWS): POST /_control {"throttle": N} (the next N calls answer throttling),
  {"throttle_rate": 0.3, "seed": 1} (that share of calls, reproducibly),
  {"status": 503, "times": N}, {"delay_ms": 50}, {"item_errors": N} (the next N documents of
  batches answer INTERNAL_SERVER_ERROR in the ErrorList); GET /_log (every request with its target,
  documents and the SDK's amz-sdk-request attempt header); POST /_reset.
"""

import datetime
import hashlib
import hmac
import json
import random
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCESS_KEY = "AKIDSTANDIN"
SECRET_KEY = "standin-secret"

POSITIVE = {"great", "good", "fast", "love", "thanks", "excellent", "happy", "perfect"}
NEGATIVE = {"terrible", "bad", "slow", "hate", "awful", "waited", "broken", "worst"}

STATE = {"throttle": 0, "throttle_rate": 0.0, "rng": random.Random(1), "status": None, "times": 0,
         "delay_ms": 0, "item_errors": 0, "log": []}
LOCK = threading.Lock()


def sentiment(text):
    words = [w.strip(".,!?;:'\"()").lower() for w in text.split()]
    pos = sum(w in POSITIVE for w in words)
    neg = sum(w in NEGATIVE for w in words)
    if pos and neg:
        label, scores = "MIXED", (0.1, 0.1, 0.05, 0.75)
    elif pos:
        label, scores = "POSITIVE", (0.9, 0.03, 0.05, 0.02)
    elif neg:
        label, scores = "NEGATIVE", (0.02, 0.92, 0.04, 0.02)
    else:
        label, scores = "NEUTRAL", (0.05, 0.05, 0.88, 0.02)
    p, n, u, m = scores
    return {"Sentiment": label,
            "SentimentScore": {"Positive": p, "Negative": n, "Neutral": u, "Mixed": m}}


def words_with_offsets(text):
    """(word without surrounding punctuation, begin, end) in characters."""
    out, i = [], 0
    for raw in text.split():
        start = text.index(raw, i)
        i = start + len(raw)
        w = raw.strip(".,!?;:'\"()")
        if w:
            b = start + raw.index(w)
            out.append((w, b, b + len(w)))
    return out


def entities(text):
    return {"Entities": [{"Text": w, "Type": "ORGANIZATION" if w.isupper() and len(w) > 1 else "PERSON",
                          "Score": 0.99, "BeginOffset": b, "EndOffset": e}
                         for w, b, e in words_with_offsets(text) if w[0].isupper()]}


def key_phrases(text):
    return {"KeyPhrases": [{"Text": w, "Score": 0.95, "BeginOffset": b, "EndOffset": e}
                           for w, b, e in words_with_offsets(text) if len(w) >= 7]}


def dominant_language(text):
    if any(c in text for c in "éèêàçù"):
        return {"Languages": [{"LanguageCode": "fr", "Score": 0.9}, {"LanguageCode": "en", "Score": 0.1}]}
    return {"Languages": [{"LanguageCode": "en", "Score": 0.99}]}


def pii_entities(text):
    found = []
    for w, b, e in words_with_offsets(text):
        if "@" in w and "." in w.split("@")[-1]:
            found.append({"Type": "EMAIL", "Score": 0.99, "BeginOffset": b, "EndOffset": e})
        elif w.isdigit() and len(w) >= 7:
            found.append({"Type": "PHONE", "Score": 0.98, "BeginOffset": b, "EndOffset": e})
    return {"Entities": found}


BATCH = {
    "Comprehend_20171127.BatchDetectSentiment": sentiment,
    "Comprehend_20171127.BatchDetectEntities": entities,
    "Comprehend_20171127.BatchDetectKeyPhrases": key_phrases,
    "Comprehend_20171127.BatchDetectDominantLanguage": dominant_language,
}


def sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def check_sigv4(handler, body):
    """Recomputes the AWS Signature Version 4 of the request; returns an error or None."""
    auth = handler.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "missing SigV4 Authorization header"
    parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    cred = parts["Credential"].split("/")
    if cred[0] != ACCESS_KEY:
        return "unknown access key " + cred[0]
    date, region, service = cred[1], cred[2], cred[3]
    signed = parts["SignedHeaders"].split(";")
    url = urllib.parse.urlsplit(handler.path)
    path = urllib.parse.quote(url.path or "/", safe="/-_.~%")
    query = "&".join(sorted(url.query.split("&"))) if url.query else ""
    headers = "".join(f"{h}:{' '.join(handler.headers.get(h, '').split())}\n" for h in signed)
    payload = handler.headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical = "\n".join([handler.command, path, query, headers, ";".join(signed), payload])
    amz_date = handler.headers.get("x-amz-date", "")
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = sign(("AWS4" + SECRET_KEY).encode(), date)
    k = sign(k, region)
    k = sign(k, service)
    k = sign(k, "aws4_request")
    expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parts["Signature"]):
        return "signature mismatch"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, obj, ctype="application/x-amz-json-1.1", extra=None):
        body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", "standin")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, code, message):
        self.reply(status, {"__type": code, "message": message, "Message": message})

    def do_GET(self):
        if self.path == "/_log":
            with LOCK:
                self.reply(200, STATE["log"], "application/json")
        else:
            self.reply(404, {"message": "not found"}, "application/json")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        if self.path == "/_control":
            ctl = json.loads(body or b"{}")
            with LOCK:
                for k in ("throttle", "throttle_rate", "status", "times", "delay_ms", "item_errors"):
                    if k in ctl:
                        STATE[k] = ctl[k]
                if "seed" in ctl:
                    STATE["rng"] = random.Random(ctl["seed"])
            return self.reply(200, {"ok": True}, "application/json")
        if self.path == "/_reset":
            with LOCK:
                STATE.update(throttle=0, throttle_rate=0.0, status=None, times=0, delay_ms=0, item_errors=0, log=[])
            return self.reply(200, {"ok": True}, "application/json")

        target = self.headers.get("X-Amz-Target", "")
        req = json.loads(body or b"{}") if body else {}
        entry = {"target": target, "attempt": self.headers.get("amz-sdk-request", ""), "t": time.monotonic(),
                 "documents": len(req.get("TextList", [])) if "TextList" in req else 1,
                 "language": req.get("LanguageCode")}
        with LOCK:
            STATE["log"].append(entry)
            delay = STATE["delay_ms"]
            fault = None
            if STATE["throttle"] > 0:
                STATE["throttle"] -= 1
                fault = "throttle"
            elif STATE["throttle_rate"] and STATE["rng"].random() < STATE["throttle_rate"]:
                fault = "throttle"
            elif STATE["status"] and STATE["times"] > 0:
                STATE["times"] -= 1
                fault = STATE["status"]
        if delay:
            time.sleep(delay / 1000)
        bad_sig = check_sigv4(self, body)
        if bad_sig:
            entry["status"] = 403
            return self.error(403, "InvalidSignatureException", bad_sig)
        if fault == "throttle":
            entry["status"] = 400
            return self.error(400, "ThrottlingException", "Rate exceeded")
        if isinstance(fault, int):
            entry["status"] = fault
            return self.error(fault, "InternalServerException", "scripted failure")

        if target in BATCH:
            docs = req.get("TextList", [])
            if len(docs) > 25:
                entry["status"] = 400
                return self.error(400, "BatchSizeLimitExceededException",
                                  f"{len(docs)} documents; the limit is 25")
            results, errors = [], []
            for i, text in enumerate(docs):
                with LOCK:
                    item_fault = STATE["item_errors"] > 0
                    if item_fault:
                        STATE["item_errors"] -= 1
                if item_fault:
                    errors.append({"Index": i, "ErrorCode": "INTERNAL_SERVER_ERROR",
                                   "ErrorMessage": "scripted item failure"})
                elif "[[reject]]" in text:
                    # A deterministic poison document, for dead-letter tests.
                    errors.append({"Index": i, "ErrorCode": "INVALID_REQUEST",
                                   "ErrorMessage": "the document was rejected"})
                elif len(text.encode()) > 5000:
                    errors.append({"Index": i, "ErrorCode": "TEXT_SIZE_LIMIT_EXCEEDED",
                                   "ErrorMessage": "document over 5000 bytes"})
                elif text.strip() == "":
                    errors.append({"Index": i, "ErrorCode": "INVALID_REQUEST",
                                   "ErrorMessage": "empty document"})
                else:
                    results.append(dict(Index=i, **BATCH[target](text)))
            entry["status"] = 200
            return self.reply(200, {"ResultList": results, "ErrorList": errors})
        if target == "Comprehend_20171127.DetectPiiEntities":
            text = req.get("Text", "")
            if len(text.encode()) > 100000:
                entry["status"] = 400
                return self.error(400, "TextSizeLimitExceededException", "document over 100,000 bytes")
            entry["status"] = 200
            return self.reply(200, pii_entities(text))
        if target == "Comprehend_20171127.DetectSentiment":
            text = req.get("Text", "")
            if len(text.encode()) > 5000:
                entry["status"] = 400
                return self.error(400, "TextSizeLimitExceededException", "document over 5000 bytes")
            entry["status"] = 200
            return self.reply(200, sentiment(text))
        entry["status"] = 400
        return self.error(400, "UnknownOperationException", "unknown target " + target)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    # 127.0.0.1 unless told otherwise (docker-compose passes 0.0.0.0 inside its network).
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
