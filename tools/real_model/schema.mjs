// JSON Schema -> the subset node-llama-cpp's grammar compiler enforces.
//
// node-llama-cpp's createGrammarForJsonSchema() accepts almost anything and
// silently changes its meaning: `anyOf` or a schema without `type` (including
// `{}`) becomes `null`, an unknown `format` becomes the empty string, a missing
// or non-local `$ref` becomes "any JSON", and `pattern`, `not`, `minimum`, ...
// are ignored. So every schema is rewritten here first, and what cannot be
// enforced is refused with a SchemaError (the server answers 400), never
// generated loosely.

export class SchemaError extends Error {}

const ANNOTATIONS = new Set([
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "contentMediaType", "contentEncoding", "discriminator", "x-order"
]);
// Keywords whose constraint the grammar cannot enforce: refused rather than ignored.
const UNSUPPORTED = new Set([
    "pattern", "patternProperties", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
    "dependencies", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "contains",
    "minContains", "maxContains", "propertyNames", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef",
    "$recursiveRef", "additionalItems"
]);
const TYPES = new Set(["string", "number", "integer", "boolean", "null", "object", "array"]);
const FORMATS = new Set(["date", "time", "date-time"]); // the ones node-llama-cpp enforces; others are annotations
const ANY = {oneOf: [
    {type: ["string", "number", "boolean", "null"]},
    {type: "object", additionalProperties: true},
    {type: "array"}
]};

function fail(path, why) {
    throw new SchemaError(`${path}: ${why}`);
}

function isLiteral(v) {
    return v === null || ["string", "number", "boolean"].includes(typeof v);
}

/** The schema rewritten for node-llama-cpp; throws SchemaError for what it cannot enforce. */
export function toGrammarSchema(root) {
    if (root === true) return ANY;
    if (root === null || typeof root !== "object" || Array.isArray(root))
        fail("#", "the schema must be a JSON object");
    const defs = {...(root.definitions ?? {}), ...(root.$defs ?? {})};
    const out = {};
    const seen = new Set();
    const refName = (ref, path) => {
        const m = typeof ref === "string" && ref.match(/^#\/(?:\$defs|definitions)\/([^/]+)$/);
        if (!m) fail(path, `$ref ${JSON.stringify(ref)} is not a local #/$defs/NAME reference`);
        const name = decodeURIComponent(m[1]).replace(/~1/g, "/").replace(/~0/g, "~");
        if (!(name in defs)) fail(path, `$ref ${JSON.stringify(ref)} points to no definition`);
        if (!seen.has(name)) {
            seen.add(name);
            out[name] = convert(defs[name], `#/$defs/${name}`);
        }
        return name;
    };

    function convert(s, path) {
        if (s === true) return ANY;
        if (s === false) fail(path, "the schema `false` matches nothing");
        if (s === null || typeof s !== "object" || Array.isArray(s)) fail(path, "a schema must be an object");
        for (const k of Object.keys(s))
            if (UNSUPPORTED.has(k)) fail(path, `the keyword "${k}" is not supported by the grammar compiler`);
        if (s.uniqueItems === true) fail(path, 'the keyword "uniqueItems" is not supported by the grammar compiler');

        if (s.$ref != null) {
            const rest = Object.keys(s).filter((k) => !ANNOTATIONS.has(k) && !["$ref", "$defs", "definitions"].includes(k));
            if (rest.length) fail(path, `$ref beside other constraints (${rest.join(", ")}) is not supported`);
            return {$ref: `#/$defs/${refName(s.$ref, path)}`};
        }
        if (s.allOf != null) {
            if (!Array.isArray(s.allOf) || s.allOf.length !== 1)
                fail(path, '"allOf" is supported only with exactly one schema');
            const {allOf, ...rest} = s;
            const inner = allOf[0];
            const others = Object.keys(rest).filter((k) => !ANNOTATIONS.has(k));
            if (others.length) fail(path, `"allOf" beside other constraints (${others.join(", ")}) is not supported`);
            return convert(inner, `${path}/allOf/0`);
        }
        for (const key of ["anyOf", "oneOf"]) {
            if (s[key] == null) continue;
            if (!Array.isArray(s[key]) || s[key].length === 0) fail(path, `"${key}" must be a non-empty array`);
            const others = Object.keys(s).filter((k) => !ANNOTATIONS.has(k) && k !== key && k !== "$defs" && k !== "definitions");
            if (others.length) fail(path, `"${key}" beside other constraints (${others.join(", ")}) is not supported`);
            return {oneOf: s[key].map((x, i) => convert(x, `${path}/${key}/${i}`))};
        }
        if ("const" in s) {
            if (!isLiteral(s.const)) fail(path, '"const" is supported only for strings, numbers, booleans and null');
            return {const: s.const};
        }
        if (s.enum != null) {
            if (!Array.isArray(s.enum) || s.enum.length === 0) fail(path, '"enum" must be a non-empty array');
            if (!s.enum.every(isLiteral)) fail(path, '"enum" is supported only for strings, numbers, booleans and null');
            return {enum: s.enum};
        }

        let type = s.type;
        if (type == null) {  // infer it, as a validator would accept it only in that shape
            if (s.properties != null || s.additionalProperties != null || s.required != null) type = "object";
            else if (s.items != null || s.prefixItems != null) type = "array";
            else if (s.minLength != null || s.maxLength != null || s.format != null) type = "string";
            else return ANY;
        }
        const types = Array.isArray(type) ? type : [type];
        for (const t of types) if (!TYPES.has(t)) fail(path, `unknown type ${JSON.stringify(t)}`);
        if (types.length === 0) fail(path, '"type" must not be empty');
        if (types.length > 1) return {oneOf: types.map((t) => convert({...s, type: t}, path))};
        const t = types[0];

        if (t === "object") {
            const props = s.properties ?? {};
            if (typeof props !== "object" || Array.isArray(props)) fail(path, '"properties" must be an object');
            const r = {type: "object", properties: {}};
            for (const [name, p] of Object.entries(props)) r.properties[name] = convert(p, `${path}/properties/${name}`);
            for (const name of s.required ?? [])
                if (!(name in props)) fail(path, `required property "${name}" is not in "properties"`);
            // node-llama-cpp always writes every listed property (they are all required in its
            // grammar), which is valid against the schema; extra keys only when allowed.
            if (s.additionalProperties === true || (s.additionalProperties == null && Object.keys(props).length === 0))
                r.additionalProperties = true;
            else if (s.additionalProperties != null && s.additionalProperties !== false)
                r.additionalProperties = convert(s.additionalProperties, `${path}/additionalProperties`);
            if (s.minProperties != null) r.minProperties = s.minProperties;
            if (s.maxProperties != null) r.maxProperties = s.maxProperties;
            return r;
        }
        if (t === "array") {
            const r = {type: "array"};
            if (Array.isArray(s.items)) {  // draft-07 tuple form
                r.prefixItems = s.items.map((x, i) => convert(x, `${path}/items/${i}`));
            } else {
                if (s.prefixItems != null) r.prefixItems = s.prefixItems.map((x, i) => convert(x, `${path}/prefixItems/${i}`));
                if (s.items === false) r.maxItems = r.prefixItems?.length ?? 0;
                else if (s.items != null) r.items = convert(s.items, `${path}/items`);
            }
            if (s.minItems != null) r.minItems = s.minItems;
            if (s.maxItems != null) r.maxItems = Math.min(s.maxItems, r.maxItems ?? Infinity);
            return r;
        }
        if (t === "string") {
            if (s.format != null && FORMATS.has(s.format)) {
                if (s.minLength != null || s.maxLength != null) fail(path, '"format" beside length limits is not supported');
                return {type: "string", format: s.format};
            }
            const r = {type: "string"};  // any other format is an annotation: node-llama-cpp would force ""
            if (s.minLength != null) r.minLength = s.minLength;
            if (s.maxLength != null) r.maxLength = s.maxLength;
            return r;
        }
        return {type: t};
    }

    const top = convert(root, "#");
    if (seen.size === 0) return top;
    if (top.$ref != null) return {oneOf: [top], $defs: out};  // a root $ref needs its defs beside it
    return {...top, $defs: out};
}
