// A small OpenAI-compatible endpoint for a real local model on CPU (node-llama-cpp).
//
//   POST /v1/chat/completions   chat completions, non-streaming or `stream: true` (SSE)
//   GET  /v1/models             the one model served
//
// One request at a time (a queue), one inference thread. Environment: PORT (8088),
// HOST (127.0.0.1), MODEL_PATH (.cache/*.gguf beside this file), MODEL_ID
// (smollm2-135m), CONTEXT_SIZE (the model's, at most 8192), THREADS (1),
// DEFAULT_TEMPERATURE (0.8, as llama.cpp's server), API_KEY (unset: any key).
// One line per request goes to stderr, without message content or headers.

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import {randomUUID} from "node:crypto";
import {fileURLToPath} from "node:url";
import {getLlama, JinjaTemplateChatWrapper, LlamaChat, LlamaLogLevel, resolveChatWrapper} from "node-llama-cpp";
import {SchemaError, toGrammarSchema} from "./schema.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const env = (name, fallback) => (process.env[name] ? process.env[name] : fallback);
const PORT = Number(env("PORT", 8088));
const HOST = env("HOST", "127.0.0.1");
const MODEL_ID = env("MODEL_ID", "smollm2-135m");
const THREADS = Number(env("THREADS", 1));
const DEFAULT_TEMPERATURE = Number(env("DEFAULT_TEMPERATURE", 0.8));
const API_KEY = env("API_KEY", "");
const MAX_BODY = 16 * 1024 * 1024;

function findModel() {
    const explicit = env("MODEL_PATH", "");
    if (explicit) return explicit;
    const dir = path.join(HERE, ".cache");
    const found = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith(".gguf")).sort() : [];
    if (!found.length) {
        console.error(`no .gguf model in ${dir}: run \`make real-model-serve\` or tools/real_model/fetch_model.sh`);
        process.exit(2);
    }
    return path.join(dir, found[0]);
}

const log = (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);

// ------------------------------------------------------------------ model

const t0 = Date.now();
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const modelPath = findModel();
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const CONTEXT_SIZE = Number(env("CONTEXT_SIZE", Math.min(8192, model.trainContextSize)));
const context = await model.createContext({contextSize: CONTEXT_SIZE, threads: THREADS, sequences: 1});
const sequence = context.getSequence();
// The model's own Jinja chat template, rendered as the model was trained (a default
// system prompt when none is given); a built-in wrapper only if the file has none.
const template = model.fileInfo.metadata?.tokenizer?.chat_template;
const chatWrapper = template
    ? new JinjaTemplateChatWrapper({template, tokenizer: model.tokenizer})
    : resolveChatWrapper(model);
const anyJsonGrammar = await llama.getGrammarFor("json");
const created = Math.floor(Date.now() / 1000);
log(`loaded ${path.basename(modelPath)} as ${MODEL_ID}: context ${context.contextSize}, threads ${THREADS}, `
    + `${chatWrapper.wrapperName} template, ${Date.now() - t0} ms`);

// ------------------------------------------------------------------ helpers

class HttpError extends Error {
    constructor(status, message, type = "invalid_request_error", code = null, param = null) {
        super(message);
        Object.assign(this, {status, type, code, param});
    }
}
const bad = (message, param = null, code = null) => new HttpError(400, message, "invalid_request_error", code, param);

function send(res, status, body) {
    const data = JSON.stringify(body);
    res.writeHead(status, {"content-type": "application/json", "content-length": Buffer.byteLength(data)});
    res.end(data);
}

function sendError(res, err) {
    const status = err.status ?? 500;
    send(res, status, {error: {message: err.message, type: err.type ?? "server_error", param: err.param ?? null,
        code: err.code ?? null}});
}

function readBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        let size = 0;
        req.on("data", (c) => {
            size += c.length;
            if (size > MAX_BODY) reject(new HttpError(413, "request body too large"));
            else chunks.push(c);
        });
        req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
        req.on("error", reject);
    });
}

function textOf(content, i) {
    if (content == null) return "";
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
        return content.map((part) => {
            if (part?.type === "text" && typeof part.text === "string") return part.text;
            throw bad(`messages[${i}].content: only text parts are supported, not ${JSON.stringify(part?.type)}`,
                "messages");
        }).join("");
    }
    throw bad(`messages[${i}].content must be a string or an array of text parts`, "messages");
}

/** OpenAI messages -> node-llama-cpp chat history, ending in the model turn to generate. */
function toHistory(messages) {
    if (!Array.isArray(messages) || messages.length === 0) throw bad("messages must be a non-empty array", "messages");
    const history = messages.map((m, i) => {
        const text = textOf(m?.content, i);
        switch (m?.role) {
            case "system": case "developer": return {type: "system", text};
            case "user": case "tool": case "function": return {type: "user", text};
            case "assistant": return {type: "model", response: text ? [text] : []};
            default: throw bad(`messages[${i}].role ${JSON.stringify(m?.role)} is not supported`, "messages");
        }
    });
    // A trailing assistant message is continued (a prefill), as llama.cpp's server does.
    if (history.at(-1).type !== "model") history.push({type: "model", response: []});
    return history;
}

function number(body, name, {min = -Infinity, max = Infinity, integer = false} = {}) {
    const v = body[name];
    if (v == null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v)))
        throw bad(`${name} must be ${integer ? "an integer" : "a number"} `
            + (max === Infinity ? `>= ${min}` : `in [${min}, ${max}]`), name);
    return v;
}

async function grammarFor(format) {
    if (format == null || format.type === "text") return undefined;
    if (format.type === "json_object") return anyJsonGrammar;
    if (format.type === "json_schema") {
        const schema = format.json_schema?.schema;
        if (schema == null) throw bad("response_format.json_schema.schema is required", "response_format");
        try {
            return await llama.createGrammarForJsonSchema(toGrammarSchema(schema));
        } catch (e) {
            throw bad(`response_format.json_schema cannot be compiled to a grammar: ${e.message}`, "response_format",
                "invalid_json_schema");
        }
    }
    throw bad(`response_format.type ${JSON.stringify(format.type)} is not supported`, "response_format");
}

/** Everything about one request that can be checked before it waits in the queue. */
async function prepare(body) {
    if (body === null || typeof body !== "object" || Array.isArray(body)) throw bad("the body must be a JSON object");
    number(body, "n", {min: 1, max: 1, integer: true});
    const history = toHistory(body.messages);
    const promptTokens = chatWrapper.generateContextState({chatHistory: history}).contextText
        .tokenize(model.tokenizer).length;
    const room = context.contextSize - promptTokens;
    if (room <= 0)
        throw bad(`the prompt has ${promptTokens} tokens, the context holds ${context.contextSize}`, "messages",
            "context_length_exceeded");
    const requested = number(body, "max_completion_tokens", {min: 1, integer: true})
        ?? number(body, "max_tokens", {min: 1, integer: true});
    let stop = body.stop;
    if (typeof stop === "string") stop = [stop];
    if (stop != null && !(Array.isArray(stop) && stop.every((s) => typeof s === "string" && s)))
        throw bad("stop must be a string or an array of strings", "stop");
    const frequency = number(body, "frequency_penalty", {min: -2, max: 2}) ?? 0;
    const presence = number(body, "presence_penalty", {min: -2, max: 2}) ?? 0;
    const repeat = number(body, "repeat_penalty", {min: 0});  // llama.cpp's extension
    return {
        history, promptTokens, requested,
        stream: body.stream === true,
        includeUsage: body.stream_options?.include_usage === true,
        options: {
            maxTokens: Math.min(requested ?? room, room),
            temperature: number(body, "temperature", {min: 0, max: 2}) ?? DEFAULT_TEMPERATURE,
            topP: number(body, "top_p", {min: 0, max: 1}),
            topK: number(body, "top_k", {min: 0, integer: true}),
            minP: number(body, "min_p", {min: 0, max: 1}),
            seed: number(body, "seed", {integer: true}),
            grammar: await grammarFor(body.response_format),
            customStopTriggers: stop?.length ? stop : undefined,
            // OpenAI's default is no penalty at all; node-llama-cpp's LlamaChat would apply 1.1.
            repeatPenalty: frequency || presence || (repeat != null && repeat !== 1)
                ? {frequencyPenalty: frequency || undefined, presencePenalty: presence || undefined, penalty: repeat}
                : false
        }
    };
}

// ------------------------------------------------------------------ generation

let queue = Promise.resolve();
let waiting = 0;
/** Runs fn after every earlier request has finished: one generation at a time. */
function exclusive(fn) {
    waiting++;
    const run = queue.then(() => { waiting--; return fn(); });
    queue = run.catch(() => {});
    return run;
}

async function generate(job, signal, onText) {
    const chat = new LlamaChat({contextSequence: sequence, chatWrapper, autoDisposeSequence: false});
    const before = sequence.tokenMeter.usedOutputTokens;
    const started = Date.now();
    let firstTokenMs;
    try {
        const r = await chat.generateResponse(job.history, {
            ...job.options, signal, stopOnAbortSignal: true,
            onTextChunk: onText,
            onToken: () => { firstTokenMs ??= Date.now() - started; }
        });
        return {
            firstTokenMs,
            text: r.response,
            completionTokens: sequence.tokenMeter.usedOutputTokens - before,
            finish: r.metadata.stopReason === "maxTokens" ? "length" : "stop",
            aborted: r.metadata.stopReason === "abort"
        };
    } finally {
        chat.dispose();
    }
}

function completionObject(id, job, out) {
    return {
        id, object: "chat.completion", created: Math.floor(Date.now() / 1000), model: MODEL_ID,
        system_fingerprint: null,
        choices: [{index: 0, message: {role: "assistant", content: out.text, refusal: null},
            logprobs: null, finish_reason: out.finish}],
        usage: {prompt_tokens: job.promptTokens, completion_tokens: out.completionTokens,
            total_tokens: job.promptTokens + out.completionTokens}
    };
}

async function chatCompletions(req, res, note) {
    let body;
    try {
        body = JSON.parse(await readBody(req));
    } catch (e) {
        throw e instanceof HttpError ? e : bad(`the body is not valid JSON: ${e.message}`);
    }
    const job = await prepare(body);
    const id = `chatcmpl-${randomUUID().replace(/-/g, "")}`;
    const abort = new AbortController();
    res.on("close", () => { if (!res.writableFinished) abort.abort(); });
    const queuedAt = Date.now();
    note.prompt = job.promptTokens;
    note.stream = job.stream;

    const out = await exclusive(async () => {
        note.queueMs = Date.now() - queuedAt;
        if (abort.signal.aborted) return null;
        const t = Date.now();
        if (!job.stream) {
            const o = await generate(job, abort.signal);
            note.genMs = Date.now() - t;
            note.firstMs = o.firstTokenMs;
            return o;
        }
        const chunk = (delta, finish = null, extra = {}) => `data: ${JSON.stringify({
            id, object: "chat.completion.chunk", created: Math.floor(Date.now() / 1000), model: MODEL_ID,
            system_fingerprint: null, choices: [{index: 0, delta, logprobs: null, finish_reason: finish}], ...extra
        })}\n\n`;
        res.writeHead(200, {"content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive"});
        res.write(chunk({role: "assistant", content: ""}));
        const o = await generate(job, abort.signal, (text) => { if (text) res.write(chunk({content: text})); });
        note.genMs = Date.now() - t;
        note.firstMs = o.firstTokenMs;
        if (!o.aborted) {
            res.write(chunk({}, o.finish, job.includeUsage ? {usage: null} : {}));
            if (job.includeUsage) {
                const usage = {prompt_tokens: job.promptTokens, completion_tokens: o.completionTokens,
                    total_tokens: job.promptTokens + o.completionTokens};
                res.write(`data: ${JSON.stringify({id, object: "chat.completion.chunk", created: Math.floor(Date.now() / 1000),
                    model: MODEL_ID, system_fingerprint: null, choices: [], usage})}\n\n`);
            }
            res.write("data: [DONE]\n\n");
        }
        res.end();
        return o;
    });
    if (out == null) { note.status = 499; return; }
    note.completion = out.completionTokens;
    note.finish = out.aborted ? "client-gone" : out.finish;
    if (!job.stream && !out.aborted) send(res, 200, completionObject(id, job, out));
    if (out.aborted) note.status = 499;
}

// ------------------------------------------------------------------ server

const server = http.createServer(async (req, res) => {
    const started = Date.now();
    const url = new URL(req.url, "http://localhost");
    const note = {status: 200};
    try {
        if (API_KEY && req.headers.authorization !== `Bearer ${API_KEY}`)
            throw new HttpError(401, "invalid API key", "authentication_error", "invalid_api_key");
        if (url.pathname === "/v1/models" && req.method === "GET") {
            send(res, 200, {object: "list", data: [{id: MODEL_ID, object: "model", created, owned_by: "local",
                meta: {file: path.basename(modelPath), context_size: context.contextSize, threads: THREADS}}]});
        } else if (url.pathname === "/v1/chat/completions" && req.method === "POST") {
            await chatCompletions(req, res, note);
        } else if (url.pathname === "/health" && req.method === "GET") {
            send(res, 200, {status: "ok", waiting});
        } else {
            throw new HttpError(404, `no route ${req.method} ${url.pathname}`, "not_found_error");
        }
    } catch (e) {
        note.status = e.status ?? 500;
        note.error = e.message.slice(0, 200);
        if (!(e instanceof HttpError)) log(`error: ${e.stack ?? e}`);
        if (!res.headersSent) sendError(res, e);
        else res.end();
    }
    const parts = [`${req.method} ${url.pathname} ${note.status} ${Date.now() - started}ms`];
    if (note.prompt != null) parts.push(`prompt=${note.prompt}`);
    if (note.completion != null) {
        // first token = prompt processing; the rest is decoding, measured alone as tok/s
        const decodeMs = note.genMs - (note.firstMs ?? 0);
        const tps = note.completion > 1 && decodeMs > 0 ? ((note.completion - 1) / (decodeMs / 1000)).toFixed(1) : "-";
        parts.push(`completion=${note.completion} finish=${note.finish} queue=${note.queueMs}ms `
            + `first_token=${note.firstMs ?? "-"}ms total=${note.genMs}ms decode=${tps} tok/s${note.stream ? " stream" : ""}`);
    }
    if (note.error) parts.push(`error="${note.error.replace(/"/g, "'")}"`);
    log(parts.join(" "));
});

server.listen(PORT, HOST, () => log(`listening on http://${HOST}:${PORT}/v1`));
for (const sig of ["SIGINT", "SIGTERM"]) {
    process.on(sig, () => {
        log(`${sig}: stopping`);
        server.close();
        process.exit(0);
    });
}
