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
- SageMaker (`/endpoints/{name}/invocations`): `text/csv` lines in; each line's answer is the
  sum of its numeric fields divided by 100 (one CSV value per line), or with
  `Accept: application/jsonlines` `{"score": …, "label": "high"|"low"}` per line; a line
  containing `[[drop]]` is left out of the answer (a line-count mismatch); a line containing
  `[[poison]]` fails the whole call as a model container does: `424`, `ModelError`, the
  container's `OriginalStatusCode` 400 and message. Real 6 MB limit.
- Bedrock (`/model/{id}/invoke`, `/model/{id}/converse`): Anthropic messages and Titan text
  bodies, and the Converse API. The answer: `summary: ` and the prompt's first five words of its
  last line; when the prompt says `JSON`, a fenced JSON object {"summary", "words"}; when it
  holds `[[garbage-json]]`, text that is not JSON. At most `max_tokens` words: a longer answer
  is cut there and says so as each family does (Anthropic `stop_reason: "max_tokens"`, Titan
  `completionReason: "LENGTH"`, Converse `stopReason: "max_tokens"`; else `end_turn` /
  `FINISHED`). Usage: input tokens = words of prompt and system, output tokens = words of the
  answer. With a tool (Anthropic `tools` + `tool_choice`, Converse `toolConfig` + `toolChoice`
  naming it) the answer is the tool's input, filled from the schema by `schema_answer()`
  (stop reason `tool_use`); `[[schema-violation]]` in the prompt makes an answer that breaks
  the schema (a tool input without its properties; JSON text whose `words` is "many").
  `[[blocks]]` in the prompt: the answer comes as a reasoning block (Anthropic `thinking`,
  Converse `reasoningContent`) and then two text blocks, its two halves.
  Prompt caching: the blocks marked `cache_control` (Anthropic) or before a `cachePoint`
  (Converse) are a cached prefix: the first call with it reports its words as cache-write
  tokens, every later one as cache-read tokens, and input tokens count only the rest.
- Bedrock embeddings (`/model/{id}/invoke`): Titan Text Embeddings v2 (`amazon.titan-embed-text-v2`:
  one `inputText` of at most 50,000 characters, `dimensions` 256/512/1024, `normalize`) and
  Cohere Embed (`cohere.embed-*`: `texts`, 1 to 96 of at most 2,048 characters each, and
  `input_type` required; 1,024 numbers, 384 for `-light-` models). A text's vector is derived
  from it deterministically by `embed()` (documented there, so tests compute the same numbers);
  an over-limit request is a 400 `ValidationException` naming the limit, as Bedrock answers.
- Comprehend batches holding a document with `[[refuse-batch]]` are refused whole (400
  `InvalidRequestException`, outside the `ErrorList`).
- STS AssumeRole (Query protocol, form body): session credentials ASIASTANDIN, checked with
  their session token on the calls that use them.
- Every request's SigV4 signature is checked against the test credentials (AKIDSTANDIN, and
  AKIDPROFILE for the profile tests); the access key of each request is in the log.
- Control (not AWS): POST /_control {"throttle": N} (the next N calls answer throttling),
  {"throttle_rate": 0.3, "seed": 1} (that share of calls, reproducibly),
  {"status": 503, "times": N}, {"delay_ms": 50}, {"item_errors": N} (the next N documents of
  batches answer INTERNAL_SERVER_ERROR in the ErrorList), {"bucket": {"rate": 5, "burst": 5}}
  (a token bucket: a call finding it empty is throttled, as a service enforcing its quota),
  {"reset": N} (the next N calls have their connection closed with no answer),
  {"garbage": N} (the next N calls answer 200 with a body that is not JSON),
  {"retry_after": "7"} or {"retry_after": "date+10"} (throttling answers carry Retry-After:
  seconds, or an HTTP-date that many seconds ahead),
  {"missing_s": 20} (for 20 s the endpoint or model is not there, as each service says it:
  SageMaker 400 `ValidationError` "Endpoint NAME of account N not found.", Bedrock 400
  `ValidationException` "The provided model identifier is invalid.", Comprehend 400
  `ResourceUnavailableException`),
  {"model_error": [503, 502]} (the next calls, one status each, answer 424 as a failing model
  container: SageMaker `ModelError` with `OriginalStatusCode`, Bedrock
  `ModelErrorException` with `originalStatusCode`; 0 is a container that did not answer);
  GET /_log (every request with its target, documents, access key, a Bedrock answer's usage and the SDK's
  amz-sdk-request attempt header); POST /_reset.
"""

import datetime
import hashlib
import hmac
import json
import math
import random
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEYS = {"AKIDSTANDIN": "standin-secret", "AKIDPROFILE": "profile-secret",
        "ASIASTANDIN": "standin-session-secret"}
SESSION_TOKEN = "standin-session-token"

POSITIVE = {"great", "good", "fast", "love", "thanks", "excellent", "happy", "perfect"}
NEGATIVE = {"terrible", "bad", "slow", "hate", "awful", "waited", "broken", "worst"}

FAULTS = {"throttle": 0, "throttle_rate": 0.0, "status": None, "times": 0, "delay_ms": 0,
          "item_errors": 0, "bucket": None, "reset": 0, "garbage": 0, "retry_after": None,
          "missing_s": 0, "model_error": []}
STATE = dict(FAULTS, rng=random.Random(1), log=[], tokens=0.0, refilled=0.0, missing_until=0.0)
ACCOUNT = "123456789012"
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


def number(field):
    try:
        return float(field)
    except ValueError:
        return 0.0


def csv_records(text):
    import csv
    import io
    return list(csv.reader(io.StringIO(text, newline="")))


def poison_line(body):
    """The 1-based line of a `[[poison]]` row, or None."""
    for n, rec in enumerate(csv_records(body.decode(errors="replace")), 1):
        if any("[[poison]]" in f for f in rec):
            return n
    return None


def sagemaker(body, accept):
    text = body.decode()
    records = csv_records(text)
    out = []
    for rec in records:
        if any("[[drop]]" in f for f in rec):
            continue
        score = round(sum(number(f) for f in rec) / 100, 6)
        if accept == "application/jsonlines":
            out.append(json.dumps({"score": score, "label": "high" if score >= 1 else "low"}))
        else:
            out.append(repr(score))
    return ("\n".join(out) + "\n").encode(), len(records)


def model_answer(prompt, max_tokens):
    """The answer, at most max_tokens words, and whether it was cut there."""
    if "[[garbage-json]]" in prompt:
        answer = "Sure! Here is the summary you asked for."
    else:
        last = [l for l in prompt.splitlines() if l.strip()][-1:] or [""]
        words = last[0].split()
        if "JSON" in prompt:
            n = "many" if "[[schema-violation]]" in prompt else len(words)
            answer = "```json\n" + json.dumps({"summary": " ".join(words[:5]), "words": n}) + "\n```"
        else:
            answer = "summary: " + " ".join(words[:5])
    parts = answer.split(" ")
    return " ".join(parts[:max_tokens]), len(parts) > max_tokens


def schema_answer(schema, prompt):
    """A tool's input for `schema` (Converse toolSpec.inputSchema.json, Anthropic
    input_schema): each property of the object filled from the prompt's last line — a string
    with its first five words (an enum's first value), an integer or number with its word count,
    a boolean true, an array of strings with its words. A prompt with `[[schema-violation]]`
    is answered with an object of none of the properties (as a model that ignores the schema)."""
    if "[[schema-violation]]" in prompt:
        return {"unexpected": True}
    last = ([l for l in prompt.splitlines() if l.strip()][-1:] or [""])[0].split()

    def fill(s):
        t = s.get("type")
        if "enum" in s:
            return s["enum"][0]
        if t == "object":
            return {k: fill(v) for k, v in s.get("properties", {}).items()}
        if t in ("integer", "number"):
            return len(last)
        if t == "boolean":
            return True
        if t == "array":
            return list(last)
        return " ".join(last[:5])
    return fill(schema)


PROMPT_CACHE = set()


def prompt_cache(model, cached_text):
    """(read, write) tokens of a cached prompt prefix: written the first time the model sees it,
    read every time after (the cache never expires here)."""
    if not cached_text:
        return 0, 0
    n = words(cached_text)
    with LOCK:
        hit = (model, cached_text) in PROMPT_CACHE
        PROMPT_CACHE.add((model, cached_text))
    return (n, 0) if hit else (0, n)


def anthropic_cached(req):
    """The text of the blocks marked cache_control (system and the user message)."""
    blocks = list(req.get("system", [])) if isinstance(req.get("system"), list) else []
    blocks += [c for m in req.get("messages", []) for c in m.get("content", [])]
    return "".join(b.get("text", "") for b in blocks if b.get("cache_control"))


def converse_cached(req):
    """The text of the blocks before the last cachePoint of the system prompt and of the
    user message."""
    out = []
    for blocks in [req.get("system", [])] + [m.get("content", []) for m in req.get("messages", [])]:
        points = [i for i, b in enumerate(blocks) if "cachePoint" in b]
        if points:
            out += [b.get("text", "") for b in blocks[:points[-1]]]
    return "".join(out)


def words(*texts):
    return sum(len((t or "").split()) for t in texts)


class Invalid(Exception):
    """A request Bedrock refuses: 400 ValidationException with this message."""


def embed(text, dims, normalize):
    """The stand-in's vector of `text`: with s = the sum of the text's UTF-8 bytes plus its
    length in bytes times 131, number i (from 0) is ((s * (i + 1) * 7919 + i * 104729) mod 2001
    - 1000) / 1000; with `normalize` each is divided by the vector's Euclidean norm (summed in
    order, IEEE 754 double; the square root correctly rounded)."""
    b = text.encode()
    s = sum(b) + 131 * len(b)
    v = [((s * (i + 1) * 7919 + i * 104729) % 2001 - 1000) / 1000.0 for i in range(dims)]
    if normalize:
        norm = 0.0
        for x in v:
            norm += x * x
        norm = math.sqrt(norm)
        if norm > 0:
            v = [x / norm for x in v]
    return v


def bedrock_embed(model, req):
    if "amazon.titan-embed-text-v2" in model:
        text = req.get("inputText")
        if not isinstance(text, str) or not text:
            raise Invalid("Malformed input request: inputText must be a non-empty string")
        if len(text) > 50000:
            raise Invalid("Malformed input request: expected maxLength: 50000, actual: %d" % len(text))
        dims = req.get("dimensions", 1024)
        if dims not in (256, 512, 1024):
            raise Invalid("Malformed input request: dimensions must be one of 256, 512, 1024")
        v = embed(text, dims, req.get("normalize", True))
        return {"embedding": v, "embeddingsByType": {"float": v}, "inputTextTokenCount": words(text)}
    texts = req.get("texts")
    if not isinstance(texts, list) or not 1 <= len(texts) <= 96:
        raise Invalid("Malformed input request: texts must hold 1 to 96 texts, not %s"
                      % (len(texts) if isinstance(texts, list) else "none"))
    if req.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
        raise Invalid("Malformed input request: input_type is required")
    for t in texts:
        if len(t) > 2048:
            raise Invalid("Malformed input request: expected maxLength: 2048, actual: %d" % len(t))
    dims = 384 if "-light-" in model else 1024
    return {"id": "standin", "response_type": "embeddings_floats", "texts": texts,
            "embeddings": [embed(t, dims, False) for t in texts]}


def bedrock_invoke(model, req):
    if "amazon.titan-embed" in model or "cohere.embed" in model:
        return bedrock_embed(model, req)
    if "anthropic." in model:
        prompt = "".join(c.get("text", "") for m in req.get("messages", []) for c in m.get("content", []))
        system = req.get("system", "")
        if isinstance(system, list):
            system = "".join(b.get("text", "") for b in system)
        tools = req.get("tools") or []
        if tools:
            tool = tools[0]
            chosen = req.get("tool_choice", {})
            if chosen.get("type") != "tool" or chosen.get("name") != tool.get("name"):
                raise Invalid("tool_choice must name the tool")
            answer = schema_answer(tool.get("input_schema", {}), prompt)
            return {"id": "msg_standin", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "tool_use", "id": "toolu_standin", "name": tool["name"], "input": answer}],
                    "stop_reason": "tool_use", "stop_sequence": None,
                    "usage": {"input_tokens": words(prompt, system), "output_tokens": words(json.dumps(answer))}}
        answer, cut = model_answer(prompt, req.get("max_tokens", 0))
        cached = anthropic_cached(req)
        read, write = prompt_cache(model, cached)
        usage = {"input_tokens": words(prompt, system) - words(cached), "output_tokens": words(answer)}
        if cached:
            usage.update(cache_read_input_tokens=read, cache_creation_input_tokens=write)
        content = [{"type": "text", "text": answer}]
        if "[[blocks]]" in prompt:
            # Extended thinking, then the answer in two text blocks, as Claude may answer.
            half = len(answer) // 2
            content = [{"type": "thinking", "thinking": "Let me think.", "signature": "standin"},
                       {"type": "text", "text": answer[:half]}, {"type": "text", "text": answer[half:]}]
        return {"id": "msg_standin", "type": "message", "role": "assistant", "model": model,
                "content": content,
                "stop_reason": "max_tokens" if cut else "end_turn", "stop_sequence": None,
                "usage": usage}
    if "amazon.titan-text" in model:
        prompt = req.get("inputText", "")
        answer, cut = model_answer(prompt, req.get("textGenerationConfig", {}).get("maxTokenCount", 0))
        return {"inputTextTokenCount": words(prompt),
                "results": [{"tokenCount": words(answer), "outputText": answer,
                             "completionReason": "LENGTH" if cut else "FINISHED"}]}
    return None


def bedrock_converse(model, req):
    prompt = "".join(c.get("text", "") for m in req.get("messages", []) for c in m.get("content", []))
    system = "".join(s.get("text", "") for s in req.get("system", []))
    tools = req.get("toolConfig", {}).get("tools", [])
    if tools:
        spec = tools[0].get("toolSpec", {})
        chosen = req["toolConfig"].get("toolChoice")
        if chosen is not None and chosen.get("tool", {}).get("name") != spec.get("name"):
            raise Invalid("toolChoice names another tool")
        answer = schema_answer(spec.get("inputSchema", {}).get("json", {}), prompt)
        i, o = words(prompt, system), words(json.dumps(answer))
        # Text before the tool call, as many Converse models write.
        return {"output": {"message": {"role": "assistant", "content": [
                    {"text": "Here is the result:"},
                    {"toolUse": {"toolUseId": "tooluse_standin", "name": spec["name"], "input": answer}}]}},
                "stopReason": "tool_use", "usage": {"inputTokens": i, "outputTokens": o, "totalTokens": i + o},
                "metrics": {"latencyMs": 1}}
    answer, cut = model_answer(prompt, req.get("inferenceConfig", {}).get("maxTokens", 0))
    cached = converse_cached(req)
    read, write = prompt_cache(model, cached)
    i, o = words(prompt, system) - words(cached), words(answer)
    usage = {"inputTokens": i, "outputTokens": o, "totalTokens": i + o + read + write}
    if cached:
        usage.update(cacheReadInputTokens=read, cacheWriteInputTokens=write)
    content = [{"text": answer}]
    if "[[blocks]]" in prompt:
        half = len(answer) // 2
        content = [{"reasoningContent": {"reasoningText": {"text": "Let me think.", "signature": "standin"}}},
                   {"text": answer[:half]}, {"text": answer[half:]}]
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "max_tokens" if cut else "end_turn", "usage": usage,
            "metrics": {"latencyMs": 1}}


def assume_role_xml():
    exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIASTANDIN</AccessKeyId>
      <SecretAccessKey>{KEYS["ASIASTANDIN"]}</SecretAccessKey>
      <SessionToken>{SESSION_TOKEN}</SessionToken>
      <Expiration>{exp}</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROASTANDIN:cdc-enricher</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/standin/cdc-enricher</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>standin</RequestId></ResponseMetadata>
</AssumeRoleResponse>""".encode()


def take_bucket_token():
    """With a token bucket set: True if the call may go (called under LOCK)."""
    b = STATE["bucket"]
    if not b:
        return True
    now = time.monotonic()
    STATE["tokens"] = min(b.get("burst", b["rate"]), STATE["tokens"] + (now - STATE["refilled"]) * b["rate"])
    STATE["refilled"] = now
    if STATE["tokens"] >= 1:
        STATE["tokens"] -= 1
        return True
    return False


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
    if cred[0] not in KEYS:
        return "unknown access key " + cred[0]
    if cred[0].startswith("ASIA") and handler.headers.get("x-amz-security-token") != SESSION_TOKEN:
        return "session credentials without their session token"
    date, region, service = cred[1], cred[2], cred[3]
    signed = parts["SignedHeaders"].split(";")
    url = urllib.parse.urlsplit(handler.path)
    # AWS encodes the (already encoded) path once more for every service but S3.
    path = urllib.parse.quote(url.path or "/", safe="/-_.~")
    query = "&".join(sorted(url.query.split("&"))) if url.query else ""
    headers = "".join(f"{h}:{' '.join(handler.headers.get(h, '').split())}\n" for h in signed)
    payload = handler.headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical = "\n".join([handler.command, path, query, headers, ";".join(signed), payload])
    amz_date = handler.headers.get("x-amz-date", "")
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = sign(("AWS4" + KEYS[cred[0]]).encode(), date)
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

    def setup(self):
        super().setup()
        # Headers and body leave in two writes: without this, Nagle holds the second behind
        # the client's delayed ACK (~40 ms a call).
        import socket
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
        self.reply(status, {"__type": code, "message": message, "Message": message},
                   extra={"x-amzn-ErrorType": code})

    def error_body(self, status, code, obj):
        self.reply(status, obj, "application/json", extra={"x-amzn-ErrorType": code})

    def model_error(self, service, endpoint, model, original, message):
        """424: the model container (SageMaker) or the model (Bedrock) failed, with its status."""
        if service == "sagemaker":
            kind = "client" if 400 <= original < 500 else "server"
            return self.error_body(424, "ModelError", {
                "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
                "LogStreamArn": f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{endpoint}",
                "Message": f"Received {kind} error ({original}) from primary with message \"{message}\". "
                           f"See https://us-east-1.console.aws.amazon.com/cloudwatch/home in account {ACCOUNT} for more information.",
                "OriginalMessage": message, "OriginalStatusCode": original})
        return self.error_body(424, "ModelErrorException", {
            "message": f"Received error ({original}) from model: {message}",
            "originalStatusCode": original, "resourceName": model})

    def missing(self, service, endpoint, model):
        """The endpoint or model is not there (yet), as each service says it."""
        if service == "sagemaker":
            return self.error(400, "ValidationError", f"Endpoint {endpoint} of account {ACCOUNT} not found.")
        if service == "bedrock":
            return self.error(400, "ValidationException", "The provided model identifier is invalid.")
        return self.error(400, "ResourceUnavailableException",
                          "The specified resource is not available. Check the resource and try again.")

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
                for k in FAULTS:
                    if k in ctl:
                        STATE[k] = ctl[k]
                if ctl.get("bucket"):
                    STATE["tokens"] = float(ctl["bucket"].get("burst", ctl["bucket"]["rate"]))
                    STATE["refilled"] = time.monotonic()
                if "seed" in ctl:
                    STATE["rng"] = random.Random(ctl["seed"])
                if ctl.get("missing_s"):
                    STATE["missing_until"] = time.monotonic() + float(ctl["missing_s"])
                if "model_error" in ctl:
                    STATE["model_error"] = list(ctl["model_error"])
            return self.reply(200, {"ok": True}, "application/json")
        if self.path == "/_reset":
            with LOCK:
                STATE.update(FAULTS, log=[], missing_until=0.0, model_error=[])
            return self.reply(200, {"ok": True}, "application/json")

        target = self.headers.get("X-Amz-Target", "")
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        service, model, endpoint = "comprehend", None, None
        if path.startswith("/endpoints/") and path.endswith("/invocations"):
            service, endpoint = "sagemaker", path[len("/endpoints/"):-len("/invocations")]
            target = "sagemaker:InvokeEndpoint"
        elif path.startswith("/model/") and path.rsplit("/", 1)[-1] in ("invoke", "converse"):
            service = "bedrock"
            model, op = path[len("/model/"):].rsplit("/", 1)
            target = "bedrock:" + ("InvokeModel" if op == "invoke" else "Converse")
        elif b"Action=AssumeRole" in body:
            service, target = "sts", "sts:AssumeRole"
        req = {}
        if service in ("comprehend", "bedrock") and body:
            try:
                req = json.loads(body)
            except ValueError:
                req = {}
        auth = self.headers.get("Authorization", "")
        key = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else ""
        entry = {"target": target, "attempt": self.headers.get("amz-sdk-request", ""), "t": time.monotonic(),
                 "wall": time.time(), "documents": len(req.get("TextList", [])) if "TextList" in req else 1,
                 "language": req.get("LanguageCode"), "access_key": key}
        if endpoint is not None:
            entry["endpoint"] = endpoint
            entry["documents"] = len(csv_records(body.decode(errors="replace")))
            entry["bytes"] = len(body)
        if model is not None:
            entry["model"] = model
            entry["request"] = req
        with LOCK:
            STATE["log"].append(entry)
            delay = STATE["delay_ms"]
            fault = None
            if service == "sts":
                pass
            elif STATE["throttle"] > 0:
                STATE["throttle"] -= 1
                fault = "throttle"
            elif STATE["throttle_rate"] and STATE["rng"].random() < STATE["throttle_rate"]:
                fault = "throttle"
            elif not take_bucket_token():
                fault = "throttle"
            elif time.monotonic() < STATE["missing_until"]:
                fault = "missing"
            elif STATE["model_error"]:
                fault = ("model_error", STATE["model_error"].pop(0))
            elif STATE["status"] and STATE["times"] > 0:
                STATE["times"] -= 1
                fault = STATE["status"]
            elif STATE["reset"] > 0:
                STATE["reset"] -= 1
                fault = "reset"
            elif STATE["garbage"] > 0:
                STATE["garbage"] -= 1
                fault = "garbage"
        if delay:
            time.sleep(delay / 1000)
        bad_sig = check_sigv4(self, body)
        if bad_sig:
            entry["status"] = 403
            return self.error(403, "InvalidSignatureException", bad_sig)
        if fault == "throttle":
            # Bedrock answers 429; the JSON 1.1 services and SageMaker 400 with the code.
            entry["status"] = 429 if service == "bedrock" else 400
            extra = {"x-amzn-ErrorType": "ThrottlingException"}
            ra = STATE["retry_after"]
            if ra is not None:
                if str(ra).startswith("date+"):
                    at = time.time() + float(str(ra)[5:])
                    import email.utils
                    extra["Retry-After"] = email.utils.formatdate(at, usegmt=True)
                    entry["retry_at"] = int(at)
                else:
                    extra["Retry-After"] = str(ra)
                entry["retry_after"] = extra["Retry-After"]
            return self.reply(entry["status"], {"__type": "ThrottlingException", "message": "Rate exceeded"},
                              extra=extra)
        if fault == "missing":
            entry["status"] = 400
            return self.missing(service, endpoint, model)
        if isinstance(fault, tuple):
            entry["status"] = 424
            entry["original_status"] = fault[1]
            return self.model_error(service, endpoint, model, fault[1],
                                    "upstream connect error or disconnect/reset before headers"
                                    if fault[1] else "Your invocation timed out while waiting for a response from container primary.")
        if isinstance(fault, int):
            entry["status"] = fault
            return self.error(fault, "InternalServerException", "scripted failure")
        if fault == "reset":
            entry["status"] = "reset"
            self.close_connection = True
            import socket
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "garbage":
            entry["status"] = 200
            return self.reply(200, b"<html>not what you asked for", "application/json")

        if service == "sts":
            entry["status"] = 200
            return self.reply(200, assume_role_xml(), "text/xml")
        if service == "sagemaker":
            if len(body) > 6_000_000:
                entry["status"] = 400
                return self.error(400, "ValidationError", "Request payload is larger than 6 MB")
            bad = poison_line(body)
            if bad is not None:
                entry["status"] = 424
                entry["original_status"] = 400
                return self.model_error(service, endpoint, None, 400,
                                        f"could not convert string to float: '[[poison]]' (line {bad})")
            accept = self.headers.get("Accept", "text/csv")
            out, _ = sagemaker(body, accept)
            entry["status"] = 200
            return self.reply(200, out, accept, extra={"x-Amzn-Invoked-Production-Variant": "AllTraffic"})
        if service == "bedrock":
            try:
                answer = bedrock_converse(model, req) if target == "bedrock:Converse" else bedrock_invoke(model, req)
            except Invalid as e:
                entry["status"] = 400
                return self.error(400, "ValidationException", str(e))
            if answer is None:
                entry["status"] = 400
                return self.error(400, "ValidationException", f"the stand-in knows no InvokeModel body for {model}")
            entry["status"] = 200
            if isinstance(answer, dict) and "usage" in answer:
                entry["usage"] = answer["usage"]
            return self.reply(200, answer, "application/json")

        if target in BATCH:
            docs = req.get("TextList", [])
            if len(docs) > 25:
                entry["status"] = 400
                return self.error(400, "BatchSizeLimitExceededException",
                                  f"{len(docs)} documents; the limit is 25")
            refused = [i for i, t in enumerate(docs) if "[[refuse-batch]]" in t]
            if refused:
                entry["status"] = 400
                return self.error(400, "InvalidRequestException",
                                  f"Invalid document at index {refused[0]}")
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
