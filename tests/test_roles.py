"""The roles' side of a weak model: lenient reading of replies, tight wire schemas, prompts within budget.

Pure unit tests: no server, no database. The client's use of `wire_schema` / `from_reply` is tested with
the fake server in tests/test_llm.py and the episode tests.
"""

import json
import time
from typing import Any, Optional

import jsonschema
import pytest
from pydantic import ValidationError

from core.config import Settings, load_settings
from core.llm.client import LLMResult
from core.roles import (
    Attempt,
    CuratorOutput,
    GeneratorOutput,
    LLMCurator,
    LLMGenerator,
    LLMOptimizer,
    LLMReflector,
    LLMReviewer,
    OptimizerOutput,
    ReflectorOutput,
    ReviewerOutput,
)
from core.roles.budget import clip_lines, clip_middle, message_tokens, water_level
from core.roles.parsing import as_id
from core.roles.replies import readable
from core.roles.unfenced import looks_like_code
from core.tokens import estimate_tokens
from tests import scripted

OUTPUTS: list[Any] = [GeneratorOutput, ReflectorOutput, CuratorOutput, ReviewerOutput, OptimizerOutput]
FENCE = "```"


def gen(text: str, language: Optional[str] = None) -> GeneratorOutput:
    return GeneratorOutput.for_language(language).from_reply(text)


# ----------------------------------------------------------------- Generator and Optimizer replies


def test_fenced_code_in_plain_prose_is_the_code() -> None:
    reply = f"Here is the code:\n{FENCE}python\ndef f(x):\n    return x + 1\n{FENCE}\nThis works because it adds one."
    out = gen(reply, "python")
    assert out.code == "def f(x):\n    return x + 1"
    assert "adds one" in out.reasoning and "return" not in out.reasoning
    assert out.bullet_ids == [] and out.language == "python"


@pytest.mark.parametrize("tag", ["python", "py", "Python3", ""])
def test_any_python_fence_tag_or_none(tag: str) -> None:
    assert gen(f"Sure.\n{FENCE}{tag}\nprint(1)\n{FENCE}", "python").code == "print(1)"


def test_json_code_field_with_fences_is_unwrapped() -> None:
    reply = json.dumps({"reasoning": "r", "bullet_ids": [], "code": f"{FENCE}python\nprint(1)\n{FENCE}"})
    assert gen(reply).code == "print(1)"
    reply = json.dumps({"code": f"Here you go:\n{FENCE}py\nprint(2)\n{FENCE}\nDone."})
    assert gen(reply, "python").code == "print(2)"


def test_json_with_nulls_keeps_the_code() -> None:
    out = gen('{"reasoning": null, "bullet_ids": null, "code": "print(1)", "language": null}', "python")
    assert (out.reasoning, out.bullet_ids, out.code, out.language) == ("", [], "print(1)", "python")


def test_json_inside_prose_and_json_fence() -> None:
    assert gen('Sure! {"reasoning": "x", "code": "print(3)"} Hope it helps.').code == "print(3)"
    assert gen(f'{FENCE}json\n{{"reasoning": "a", "code": "print(4)"}}\n{FENCE}').code == "print(4)"


def test_real_newlines_inside_the_json_string_are_tolerated() -> None:
    assert gen('{"code": "def f():\n    return 1"}').code == "def f():\n    return 1"


def test_a_double_escaped_program_is_restored() -> None:
    assert gen(json.dumps({"code": "def f():\\n    return 1"}), "python").code == "def f():\n    return 1"
    assert gen(json.dumps({"code": 'print("a\\nb")'}), "python").code == 'print("a\\nb")'  # already valid: kept


def test_empty_json_code_falls_back_to_a_fenced_block() -> None:
    reply = f'{{"reasoning": "see below", "code": ""}}\n{FENCE}python\nprint(5)\n{FENCE}'
    out = gen(reply, "python")
    assert out.code == "print(5)" and out.reasoning == "see below"


def test_code_as_a_list_of_lines() -> None:
    assert gen('{"code": ["def f():", "    return 1"]}').code == "def f():\n    return 1"


def test_the_reply_itself_when_it_is_only_code() -> None:
    assert gen("def f(x):\n    return x * 2\n", "python").code == "def f(x):\n    return x * 2"
    assert gen("    import sys\n    print(sys.argv)\n").code == "import sys\nprint(sys.argv)"
    assert gen("function add(a, b) { return a + b; }\nconsole.log(add(1, 2));", "javascript").code.startswith(
        "function add")


def test_the_matching_language_block_wins_else_the_longest() -> None:
    reply = (f"Install first:\n{FENCE}bash\npip install nothing-at-all-really-long-command\n{FENCE}\n"
             f"Then:\n{FENCE}python\nprint(1)\n{FENCE}")
    assert gen(reply, "python").code == "print(1)"
    two = f"{FENCE}js\nconsole.log(1)\n{FENCE}\n{FENCE}python\nprint(1)\n{FENCE}"
    assert gen(two, "javascript").code == "console.log(1)"
    assert gen(two, "python").code == "print(1)"
    assert gen(f"a\n{FENCE}\nprint(1)\n{FENCE}\nb\n{FENCE}\nprint(22222)\n{FENCE}", "python").code == "print(22222)"


def test_a_block_in_another_known_language_is_not_the_program() -> None:
    with pytest.raises(ValueError, match="no code in the reply"):
        gen(f"Run this:\n{FENCE}bash\nls -la\n{FENCE}", "python")
    with pytest.raises(ValueError, match="no code in the reply"):
        gen(f"The output:\n{FENCE}text\n42\n{FENCE}", "python")


def test_a_reply_cut_off_inside_its_fence_still_gives_the_code() -> None:
    assert gen(f"Here:\n{FENCE}python\ndef f():\n    return 1\n", "python").code == "def f():\n    return 1"


def test_truncated_json_is_refused() -> None:
    with pytest.raises(ValueError, match="no code in the reply"):
        gen('{"reasoning": "I will write", "bullet_ids": ["py-00001"], "code": "def f(x):\\n    return')
    with pytest.raises(ValueError, match="no code in the reply"):
        gen('{"reasoning": "x", "bullet_ids": ["1", "1", "1", "1", ')


@pytest.mark.parametrize("reply", [
    "Sure! I can help you with that task. Let me think about it.",
    "",
    '{"foo": 1, "bar": [1, 2]}',
    '{"reasoning": "I could not do it", "code": null}',
    "Yes",
])
def test_no_code_is_a_value_error_with_an_excerpt(reply: str) -> None:
    with pytest.raises(ValueError, match="no code in the reply: ") as info:
        gen(reply, "python")
    assert len(str(info.value)) < 250


def test_bullet_ids_numbers_brackets_repeats_and_cap() -> None:
    ids: list[Any] = [1, " py-00002 ", "[py-00003]", 1, "", None, 2.0, True, "py-00002"] + [f"b-{i}" for i in range(40)]
    out = gen(json.dumps({"code": "print(1)", "bullet_ids": ids}))
    assert out.bullet_ids[:4] == ["1", "py-00002", "py-00003", "2.0"]
    assert len(out.bullet_ids) == 20 and len(set(out.bullet_ids)) == 20
    assert gen('{"code": "print(1)", "bullet_ids": "py-1, py-2"}').bullet_ids == ["py-1", "py-2"]


def test_invented_sentences_are_kept_clipped_for_the_loop_to_count() -> None:
    out = gen(json.dumps({"code": "print(1)", "bullet_ids": ["a bullet about sorting lists " * 20]}))
    assert len(out.bullet_ids) == 1 and len(out.bullet_ids[0]) <= 100


def test_optimizer_reads_replies_the_same_way() -> None:
    out = OptimizerOutput.for_language("python").from_reply(f"Rewritten:\n{FENCE}python\nprint(9)\n{FENCE}")
    assert isinstance(out, OptimizerOutput) and out.code == "print(9)"


def test_bound_classes_are_cached_subclasses_with_the_same_name() -> None:
    js = GeneratorOutput.for_language("javascript")
    assert js is GeneratorOutput.for_language("javascript") and issubclass(js, GeneratorOutput)
    assert js.__name__ == "GeneratorOutput" and GeneratorOutput.for_language(None) is GeneratorOutput
    assert js.wire_schema()["properties"]["language"] == {"type": "string", "enum": ["javascript"]}
    assert js.from_reply('{"code": "console.log(1)"}').language == "javascript"


def test_built_directly_the_models_stay_strict() -> None:
    with pytest.raises(ValidationError):
        GeneratorOutput.model_validate({"reasoning": "no code"})
    with pytest.raises(ValidationError):
        CuratorOutput.model_validate({"operations": [{"type": "BOGUS"}]})
    with pytest.raises(ValidationError):
        ReflectorOutput.model_validate({"bullet_tags": [{"id": "x", "tag": "great"}]})


def test_looks_like_code() -> None:
    assert looks_like_code("x = 1", "python") and looks_like_code("print('hi')")
    assert not looks_like_code("Hello", "python") and not looks_like_code("I think this is right.", "python")
    assert not looks_like_code('{"code": "x"}') and not looks_like_code("echo hi and then it is done", "bash")
    assert looks_like_code("for f in *.txt; do echo $f; done", "bash")


# ------------------------------------------------------------------------------- Reflector replies


def test_reflector_nulls_and_odd_values_become_text() -> None:
    out = ReflectorOutput.from_reply(json.dumps({
        "reasoning": None, "error_identification": ["a", "b"], "root_cause_analysis": 5,
        "correct_approach": {"do": "x"}, "bullet_tags": None}))
    assert out.reasoning == "" and out.error_identification == "a\nb" and out.root_cause_analysis == "5"
    assert json.loads(out.correct_approach) == {"do": "x"} and out.key_insight == "" and out.bullet_tags == []


def test_malformed_bullet_tags_are_dropped_not_fatal() -> None:
    tags = [{"id": 1, "tag": "Helpful"}, {"tag": "harmful"}, {"id": "x", "tag": "great"}, "py-7: neutral",
            3, None, {"bullet_id": "[py-8]", "tag": "harmful"}, {"id": 1, "tag": "harmful"}]
    out = ReflectorOutput.from_reply(json.dumps({"key_insight": "k", "bullet_tags": tags}))
    assert [(t.id, t.tag) for t in out.bullet_tags] == [("1", "helpful"), ("py-7", "neutral"), ("py-8", "harmful")]


def test_bullet_tags_capped_and_as_a_mapping() -> None:
    many = [{"id": f"b-{i}", "tag": "neutral"} for i in range(50)]
    assert len(ReflectorOutput.from_reply(json.dumps({"bullet_tags": many})).bullet_tags) == 20
    mapped = ReflectorOutput.from_reply('{"bullet_tags": {"py-1": "helpful", "py-2": "nope"}}')
    assert [(t.id, t.tag) for t in mapped.bullet_tags] == [("py-1", "helpful")]


def test_reflection_wrapped_or_in_prose() -> None:
    assert ReflectorOutput.from_reply('{"reflection": {"key_insight": "k"}}').key_insight == "k"
    assert ReflectorOutput.from_reply('My analysis: {"key_insight": "k2"} -- end').key_insight == "k2"


@pytest.mark.parametrize("reply,message", [
    ("The code failed because of an off-by-one error.", "no JSON object in the reply"),
    ('{"reasoning": "x", "bullet_tags": [{"id": "a", "tag": "helpful"},', "cut off or invalid"),
    ('{"answer": 42}', "none of the reflection fields"),
])
def test_reflector_refuses_replies_without_a_reflection(reply: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReflectorOutput.from_reply(reply)


# --------------------------------------------------------------------------------- Curator replies


def test_curator_keeps_valid_ops_and_drops_invalid_ones_with_reasons() -> None:
    ops = [
        {"type": "ADD", "section": None, "content": None},
        {"type": "add", "section": "Pitfalls", "content": "check empty input", "justification": None},
        {"type": "TAG", "bullet_id": "py-1", "tag": "great"},
        "junk",
        {"type": "MERGE", "bullet_ids": ["a"], "content": "c"},
        {"type": "BOGUS"},
        {"section": "x", "content": "no type"},
        {"type": "REMOVE", "id": 7},
        {"type": "UPDATE", "content": "new text"},
        {"type": "TAG", "bullet_id": "py-2", "tag": "HARMFUL"},
        {"type": "MERGE", "bullet_ids": ["a", "a", "b"], "content": "merged"},
        {"type": "ADD", "section": "s", "content": "x" * 5000},
    ]
    out = CuratorOutput.from_reply(json.dumps({"reasoning": "r", "operations": ops}))
    assert [(o.type, o.bullet_id) for o in out.operations] == [
        ("ADD", None), ("REMOVE", "7"), ("TAG", "py-2"), ("MERGE", None)]
    assert out.operations[0].section == "pitfalls" and out.operations[0].justification == ""
    assert out.operations[3].bullet_ids == ["a", "b"]
    reasons = [d["reason"] for d in out.dropped]
    assert reasons[0] == "ADD needs content"
    assert reasons[1].startswith("TAG needs tag: helpful, harmful or neutral")
    assert reasons[2] == "not an operation object (got a string)"
    assert reasons[3] == "MERGE needs at least two distinct bullet_ids"
    assert reasons[4].startswith("unknown operation type 'BOGUS'")
    assert reasons[5].startswith("the operation has no type")
    assert reasons[6] == "UPDATE needs bullet_id"
    assert "4,000" in reasons[7]
    assert out.dropped[0]["op"] == {"type": "ADD", "section": None, "content": None}
    assert len(out.dropped[7]["op"]["content"]) <= 310  # long strings clipped in the trace
    json.dumps(out.model_dump())  # JSON-safe, `dropped` included
    assert "dropped" in out.model_dump()


def test_add_with_null_section_but_content_is_kept_for_the_default_section() -> None:
    out = CuratorOutput.from_reply('{"operations": [{"type": "ADD", "section": null, "content": "x"}]}')
    assert out.operations[0].content == "x" and out.operations[0].section is None and out.dropped == []


def test_fields_of_other_op_types_are_not_kept() -> None:
    out = CuratorOutput.from_reply('{"operations": [{"type": "ADD", "section": "s", "content": "c", '
                                   '"bullet_id": "py-9", "bullet_ids": ["a", "b"], "tag": "helpful"}]}')
    op = out.operations[0]
    assert (op.bullet_id, op.bullet_ids, op.tag) == (None, [], None)


@pytest.mark.parametrize("reply", ['{"reasoning": "nothing new", "operations": null}', '{"reasoning": "none"}',
                                   '{"operations": []}'])
def test_no_operations(reply: str) -> None:
    out = CuratorOutput.from_reply(reply)
    assert out.operations == [] and out.dropped == []


def test_bare_list_or_single_op_or_not_a_list() -> None:
    assert CuratorOutput.from_reply('[{"type": "REMOVE", "bullet_id": "py-1"}]').operations[0].bullet_id == "py-1"
    assert CuratorOutput.from_reply(f'{FENCE}json\n{{"type": "REMOVE", "bullet_id": "py-2"}}\n{FENCE}'
                                    ).operations[0].bullet_id == "py-2"
    one = CuratorOutput.from_reply('{"operations": {"type": "TAG", "bullet_id": "b", "tag": "helpful"}}')
    assert one.operations[0].tag == "helpful"
    odd = CuratorOutput.from_reply('{"operations": "add a bullet"}')
    assert odd.operations == [] and odd.dropped[0]["reason"] == "operations must be a list (got a string)"


def test_at_most_twenty_ops_are_considered() -> None:
    ops = [{"type": "REMOVE", "bullet_id": f"b-{i}"} for i in range(500)]
    out = CuratorOutput.from_reply(json.dumps({"operations": ops}))
    assert len(out.operations) == 20 and len(out.dropped) == 1
    assert out.dropped[0]["reason"] == "480 operations past the first 20 were not considered"


@pytest.mark.parametrize("reply", ["I would add a bullet about edge cases.", '{"reasoning": "x", "operations": [',
                                   '{"verdict": "fine"}'])
def test_curator_refuses_replies_without_a_curation(reply: str) -> None:
    with pytest.raises(ValueError):
        CuratorOutput.from_reply(reply)


# -------------------------------------------------------------------------------- Reviewer replies


@pytest.mark.parametrize("value,expected", [("true", True), ("False", False), ("yes", True), (None, False),
                                            (1, True), (0, False), ("maybe", False), (True, True)])
def test_needs_optimization_coerced(value: Any, expected: bool) -> None:
    assert ReviewerOutput.from_reply(json.dumps({"needs_optimization": value})).needs_optimization is expected


def test_reviewer_nulls_and_issues() -> None:
    out = ReviewerOutput.from_reply(json.dumps({"reasoning": None, "issues": "one thing", "suggestions": None,
                                                "bullet_ids": [3, "3"]}))
    assert (out.reasoning, out.issues, out.suggestions, out.bullet_ids) == ("", ["one thing"], "", ["3"])
    many = ReviewerOutput.from_reply(json.dumps({"issues": [f"issue {i}" for i in range(30)] + [None, ""]}))
    assert len(many.issues) == 10
    dicts = ReviewerOutput.from_reply('{"issues": [{"issue": "slow"}, {"description": "wrong"}], "reasoning": 1}')
    assert dicts.issues == ["slow", "wrong"]
    with pytest.raises(ValueError, match="no JSON object"):
        ReviewerOutput.from_reply("Looks good to me.")


# ------------------------------------------------------------------------------------ wire schemas


def _walk(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.items():
            out += _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("model", OUTPUTS + [GeneratorOutput.for_language("bash")])
def test_wire_schemas_are_tight(model: Any) -> None:
    schema = model.wire_schema()
    text = json.dumps(schema)
    assert "null" not in text and "$ref" not in text and "$defs" not in text
    jsonschema.Draft202012Validator.check_schema(schema)
    for path, node in _walk(schema):
        for bound in ("maxLength", "maxItems", "minItems", "minLength"):
            if bound in node:
                assert node[bound] < 2000, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, path
            assert set(node["required"]) <= set(node["properties"]), path
        if node.get("type") == "string" and not path.endswith(".code") and "enum" not in node:
            assert "maxLength" in node, path
        assert not isinstance(node.get("type"), list), path  # never ["string", "null"]
    assert "dropped" not in text


@pytest.mark.parametrize("model", [GeneratorOutput, OptimizerOutput])
def test_code_has_no_upper_bound(model: Any) -> None:
    code = model.wire_schema()["properties"]["code"]
    assert code == {"type": "string", "minLength": 1}


def test_curator_ops_one_shape_per_type() -> None:
    schema = CuratorOutput.wire_schema()
    ops = schema["properties"]["operations"]
    assert ops["maxItems"] == 8
    shapes = {s["properties"]["type"]["enum"][0]: s for s in ops["items"]["anyOf"]}
    assert all(len(s["properties"]["type"]["enum"]) == 1 for s in shapes.values())
    assert set(shapes) == {"ADD", "UPDATE", "TAG", "REMOVE", "MERGE"}
    assert set(shapes["ADD"]["required"]) == {"type", "section", "content"}
    assert shapes["ADD"]["properties"]["content"]["minLength"] == 1
    assert shapes["ADD"]["properties"]["section"]["minLength"] == 1
    assert set(shapes["UPDATE"]["required"]) == {"type", "bullet_id", "content"}
    assert set(shapes["TAG"]["required"]) == {"type", "bullet_id", "tag"}
    assert shapes["TAG"]["properties"]["tag"]["enum"] == ["helpful", "harmful", "neutral"]
    assert set(shapes["REMOVE"]["required"]) == {"type", "bullet_id"}
    assert set(shapes["REMOVE"]["properties"]) == {"type", "bullet_id", "justification", "evidence"}
    merge = shapes["MERGE"]["properties"]["bullet_ids"]
    assert (merge["minItems"], merge["maxItems"]) == (2, 4)
    assert "dropped" not in json.dumps(CuratorOutput.model_json_schema())


def test_bounds_asked_for() -> None:
    g = GeneratorOutput.wire_schema()["properties"]
    r = ReflectorOutput.wire_schema()["properties"]
    v = ReviewerOutput.wire_schema()["properties"]
    assert g["bullet_ids"]["maxItems"] == 10 and r["bullet_tags"]["maxItems"] == 10
    assert v["issues"]["maxItems"] == 8 and v["bullet_ids"]["maxItems"] == 10
    assert g["bullet_ids"]["items"]["minLength"] == 1


def test_what_the_wire_schemas_accept_and_refuse() -> None:
    check = jsonschema.Draft202012Validator
    assert check(GeneratorOutput.wire_schema()).is_valid(scripted.gen("print(1)", ["py-00001"]))
    assert check(ReflectorOutput.wire_schema()).is_valid(scripted.refl("k", [("py-00001", "helpful")]))
    assert check(CuratorOutput.wire_schema()).is_valid(scripted.cur(scripted.add("c")))
    curator = check(CuratorOutput.wire_schema())
    for bad in [{"type": "ADD", "section": None, "content": None}, {"type": "ADD", "section": "s", "content": ""},
                {"type": "TAG", "bullet_id": "b", "tag": "great"}, {"type": "REMOVE"},
                {"type": "MERGE", "bullet_ids": ["a"], "content": "c"}, {"type": "ADD", "content": "c"},
                {"type": "REMOVE", "bullet_id": "b", "content": "extra"}]:
        assert not curator.is_valid({"reasoning": "", "operations": [bad]}), bad
    endless = scripted.gen("print(1)", [str(i) for i in range(11)])
    assert not check(GeneratorOutput.wire_schema()).is_valid(endless)


@pytest.mark.parametrize("model,reply", [
    (GeneratorOutput, scripted.gen("print(1)", ["py-00001"])),
    (ReflectorOutput, scripted.refl("k", [("py-00001", "harmful")])),
    (CuratorOutput, scripted.cur(scripted.add("c"), {"type": "TAG", "bullet_id": "b", "tag": "helpful"})),
    (ReviewerOutput, {"reasoning": "r", "needs_optimization": True, "issues": ["i"], "suggestions": "s",
                      "bullet_ids": ["b"]}),
])
def test_well_formed_replies_read_as_before(model: Any, reply: dict[str, Any]) -> None:
    assert model.from_reply(json.dumps(reply)) == model.model_validate(reply)


def test_schema_sizes_stay_small() -> None:
    sizes = {m.__name__: len(json.dumps(m.wire_schema())) for m in OUTPUTS}
    assert all(size < 2500 for size in sizes.values()), sizes


# -------------------------------------------------------------------------------- prompts in budget


class RecordingLLM:
    """Stands in for LLMClient: records each structured call, answers from queued raw replies."""

    def __init__(self, settings: Settings, *replies: str):
        self.settings, self.replies = settings, list(replies)
        self.calls: list[dict[str, Any]] = []

    def structured(self, role: str, messages: list[dict[str, Any]], schema: Any, episode_id: Optional[str] = None,
                   *, max_tokens: Optional[int] = None) -> LLMResult[Any]:
        self.calls.append({"role": role, "messages": messages, "schema": schema, "max_tokens": max_tokens})
        raw = self.replies.pop(0)
        return LLMResult(schema.from_reply(raw), raw, 0, 0, 0.0, [], "plain", messages)


def _playbook(n: int) -> str:
    lines = [f"[py-{i:05d}] helpful={i % 7} harmful=0 :: when parsing input number {i}, strip whitespace and "
             f"check for empty strings before converting; a long strategy text follows " + "detail " * 30
             for i in range(n)]
    return "**PLAYBOOK_BEGIN**\n## strategies\n" + "\n".join(lines) + "\n\nNear-duplicate bullets (consider " \
        "MERGE): [py-00001] ~ [py-00002] (similarity 0.93)\n**PLAYBOOK_END**"


def _attempts(n: int) -> list[Attempt]:
    return [Attempt(i, "def f(x):\n    return x\n" * 800, "Traceback (most recent call last):\n  File x\n" * 700
                    + f"AssertionError: attempt {i}", False, ["py-00001"]) for i in range(1, n + 1)]


def _all_messages(settings: Settings) -> dict[str, tuple[list[dict[str, Any]], Any]]:
    llm: Any = RecordingLLM(settings)
    pb, attempts, task = _playbook(5000), _attempts(10), "Write f(x). " * 4000
    review = ReviewerOutput(issues=["it is slow " * 200] * 8, suggestions="rewrite it " * 1000)
    reflection = ReflectorOutput(reasoning="long " * 5000, key_insight="insight " * 2000)
    return {
        "generator": (LLMGenerator(llm).messages(task, "python", pb, attempts), GeneratorOutput),
        "reflector": (LLMReflector(llm).messages(task, attempts, "\n".join(pb.splitlines()[2:40]), "gt " * 9000,
                                                 "Focus on parsing. " * 500), ReflectorOutput),
        "curator": (LLMCurator(llm).messages(task, reflection, pb, "failed " * 1000, "Be brief. " * 500),
                    CuratorOutput),
        "reviewer": (LLMReviewer(llm).messages(task, "python", attempts[0].code * 5, attempts[0].feedback * 5, pb),
                     ReviewerOutput),
        "optimizer": (LLMOptimizer(llm).messages(task, "python", attempts[0].code * 5, attempts[0].feedback * 5,
                                                 review, pb), OptimizerOutput),
    }


@pytest.mark.parametrize("cap", [6000, 3000])
def test_huge_inputs_still_fit_the_prompt_budget(cap: int) -> None:
    settings = load_settings({"ACE_PROMPT_MAX_TOKENS": str(cap)})
    for role, (messages, schema) in _all_messages(settings).items():
        instruction = "Reply with only one JSON object ...:\n" + json.dumps(schema.wire_schema())
        total = message_tokens(messages) + estimate_tokens(instruction)
        assert total <= cap, (role, total)
        assert total > cap * 0.6, (role, total)  # cut to fit, not cut to nothing
        joined = "\n".join(m["content"] for m in messages)
        assert "cut to fit the prompt" in joined


def test_a_cut_playbook_keeps_whole_bullet_lines_and_its_end() -> None:
    settings = load_settings({})
    messages, _ = _all_messages(settings)["curator"]
    user = messages[1]["content"]
    shown = user.split("Current playbook:\n", 1)[1].split("\n\nTask:", 1)[0]
    assert shown.startswith("**PLAYBOOK_BEGIN**") and shown.rstrip().endswith("**PLAYBOOK_END**")
    for line in shown.splitlines():
        if line.startswith("[py-"):
            assert line.rstrip().endswith("detail"), line  # never half a strategy


def test_small_inputs_are_not_touched() -> None:
    llm: Any = RecordingLLM(load_settings({}))
    pb = _playbook(3)
    messages = LLMGenerator(llm).messages("print one", "python", pb, [])
    assert pb in messages[0]["content"] and "cut to fit" not in json.dumps(messages)
    assert messages[1]["content"].strip() == "Task:\nprint one"


def test_each_attempt_keeps_its_share_and_its_traceback_end() -> None:
    messages, _ = _all_messages(load_settings({}))["reflector"]
    user = messages[1]["content"]
    for i in range(1, 11):
        assert f"--- attempt {i} (FAILED) ---" in user and f"AssertionError: attempt {i}" in user


def test_budget_helpers() -> None:
    assert water_level([1000, 500, 100], 600) == 450
    assert water_level([1000, 500, 100], 10_000) == 200  # the floor
    assert clip_middle("a" * 50, 100) == "a" * 50
    cut = clip_middle("a" * 5000 + "END", 1000)
    assert len(cut) <= 1000 and cut.endswith("END") and "characters cut" in cut
    lines = "\n".join(f"line {i} " + "x" * 40 for i in range(1000))
    clipped = clip_lines(lines, 2000)
    assert len(clipped) <= 2000 and clipped.startswith("line 0 ") and clipped.endswith("line 999 " + "x" * 40)
    assert "lines cut to fit the prompt" in clipped


# ------------------------------------------------------------------------------ prompts and caps


def test_prompts_say_how_to_answer_and_how_big() -> None:
    settings = load_settings({})
    llm: Any = RecordingLLM(settings)
    gen_sys = LLMGenerator(llm).messages("t", "python", _playbook(2), [])[0]["content"]
    assert "`code` field" in gen_sys and f"{FENCE}python fenced block" in gen_sys
    assert "at most 10 ids" in gen_sys and "about 100 words" in gen_sys
    js_sys = LLMGenerator(llm).messages("t", "javascript", "", [])[0]["content"]
    assert f"{FENCE}javascript fenced block" in js_sys
    opt_sys = LLMOptimizer(llm).messages("t", "python", "x", "f", ReviewerOutput(), "")[0]["content"]
    assert "`code` field" in opt_sys and f"{FENCE}python fenced block" in opt_sys
    cur_sys = LLMCurator(llm).messages("t", ReflectorOutput(), "", "failed")[0]["content"]
    assert "At most 5 operations" in cur_sys and "Use only bullet ids shown" in cur_sys
    rev_sys = LLMReviewer(llm).messages("t", "python", "x", "f", "")[0]["content"]
    assert "At most 5 issues" in rev_sys
    for text in (gen_sys, opt_sys, cur_sys, rev_sys):  # every placeholder filled
        assert "$max" not in text and "$fence" not in text and "$extra" not in text


def test_the_reflector_is_told_which_ids_it_may_tag() -> None:
    llm: Any = RecordingLLM(load_settings({}))
    used = "[py-00001] helpful=1 harmful=0 :: a\n[py-00007] helpful=0 harmful=2 :: b"
    user = LLMReflector(llm).messages("t", _attempts(1), used, None)[1]["content"]
    assert "Bullet ids you may tag: py-00001, py-00007" in user
    system = LLMReflector(llm).messages("t", _attempts(1), used, None)[0]["content"]
    assert "never make up an id" in system and "at most 10 entries" in system
    none = LLMReflector(llm).messages("t", _attempts(1), "", None)[1]["content"]
    assert "Bullet ids you may tag: (none: leave bullet_tags empty)" in none


def test_an_attempt_without_code_is_shown_as_such() -> None:
    llm: Any = RecordingLLM(load_settings({}))
    failed = Attempt(1, "", "the model's reply could not be used: no code in the reply", False)
    user = LLMGenerator(llm).messages("t", "python", "", [failed])[1]["content"]
    assert "(no code: the model's reply could not be used)" in user and "no code in the reply" in user


def test_roles_send_their_caps_and_language_bound_schemas() -> None:
    settings = load_settings({"ACE_MAX_TOKENS_GENERATOR": "900", "ACE_MAX_TOKENS_REFLECTOR": "300",
                              "ACE_MAX_TOKENS_CURATOR": "400", "ACE_MAX_TOKENS_REVIEWER": "200"})
    llm = RecordingLLM(settings, f"{FENCE}js\nconsole.log(1)\n{FENCE}", '{"key_insight": "k"}',
                       '{"operations": [{"type": "ADD", "section": null, "content": null}]}',
                       '{"needs_optimization": "false"}', '{"code": "print(2)"}', '{"code": "print(3)"}')
    any_llm: Any = llm
    out = LLMGenerator(any_llm).generate("t", "javascript", "", [])
    assert out.value.code == "console.log(1)" and out.value.language == "javascript"
    LLMReflector(any_llm).reflect("t", _attempts(1), "", None)
    cur = LLMCurator(any_llm).curate("t", ReflectorOutput(), "", "failed")
    assert cur.value.operations == [] and cur.value.dropped[0]["reason"] == "ADD needs content"
    LLMReviewer(any_llm).review("t", "python", "x", "f", "")
    LLMOptimizer(any_llm).optimize("t", "python", "x", "f", ReviewerOutput(), "")
    LLMGenerator(any_llm, "review-generator").generate("t", "python", "", [])
    assert [(c["role"], c["max_tokens"]) for c in llm.calls] == [
        ("generator", 900), ("reflector", 300), ("curator", 400), ("reviewer", 200), ("optimizer", 900),
        ("review-generator", 900)]
    assert llm.calls[0]["schema"].reply_language == "javascript"
    assert llm.calls[4]["schema"].reply_language == "python" and issubclass(llm.calls[4]["schema"], OptimizerOutput)


# ------------------------------------------------------------------ pathological and adversarial replies

ENTRY_POINTS: list[Any] = [GeneratorOutput, GeneratorOutput.for_language("python"),
                           GeneratorOutput.for_language("javascript"), GeneratorOutput.for_language("bash"),
                           OptimizerOutput.for_language("python"), ReflectorOutput, CuratorOutput, ReviewerOutput]
N = 100_000
_SPACED_ID = "[" + " " * N + "x"
ADVERSARIAL = {
    "whitespace inside a bracket": _SPACED_ID,
    "whitespace inside bracketed ids": json.dumps({
        "code": "print(1)", "bullet_ids": [_SPACED_ID], "bullet_tags": [{"id": _SPACED_ID, "tag": "helpful"}],
        "operations": [{"type": "REMOVE", "bullet_id": _SPACED_ID}], "reasoning": "r"}),
    "a tag line of whitespace": json.dumps({"bullet_tags": ["py-1:" + " " * N + "x y"], "key_insight": "k"}),
    "word characters after a fence": FENCE + "a" * N,
    "an unclosed fence after a long tag": FENCE + "a" * N + "\nprint(1)\n",
    "many fences": (FENCE + "a\n") * (N // 5),
    "deep arrays": "[" * N,
    "deep objects": '{"a":' * (N // 5),
    "deep nesting after a good object": '{"code": "print(1)", "key_insight": "k", "operations": []} ' + "[" * N,
    "long unclosed JSON at every brace": '{"a":' * 200 + "[" + "1," * (N // 2),
    "one long line of words": "the quick brown fox jumps " * (N // 26),
    "a long unary chain": "-" * N + "1",
    "a long operator chain": "a" + "+a" * (N // 2),
    "only newlines": "\n" * N,
    "lines of spaces": (" " * 99 + "\n") * (N // 100),
    "backticks": "`" * N,
    "code then a sentence": "def f():\n    return 1\n" * (N // 22) + "Hope this helps.",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_replies_are_read_quickly_and_fail_only_with_value_errors(name: str) -> None:
    reply = ADVERSARIAL[name]
    for model in ENTRY_POINTS:
        started = time.perf_counter()
        try:
            model.from_reply(reply)
        except (ValueError, ValidationError):
            pass
        elapsed = time.perf_counter() - started
        # a guard against catastrophic backtracking (minutes at this size), not a speed target: it must hold
        # on a loaded CI machine, where even linear parsing of 100k characters took 1 s beside other tests
        assert elapsed < 10.0, (name, model.__name__, model.reply_language if hasattr(model, "reply_language")
                               else None, elapsed)


@pytest.mark.parametrize("reply", ["[" * 5000, '{"a":' * 5000, "the quick brown fox jumps " * 300,
                                   "-" * 100_000 + "1", '{"code": ' + "[" * 5000 + "}"])
@pytest.mark.parametrize("model", ENTRY_POINTS)
def test_deep_nesting_and_parser_blowups_are_value_errors(model: Any, reply: str) -> None:
    with pytest.raises(ValueError):  # never RecursionError or MemoryError: those would end the episode
        model.from_reply(reply)


def test_a_reader_that_hits_python_limits_raises_a_value_error() -> None:
    @readable
    def reader(text: str) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    with pytest.raises(ValueError, match=r"could not be read \(RecursionError\): 'abc'"):
        reader("abc")


def test_bracketed_ids_without_a_regex() -> None:
    assert as_id("[py-00042]") == "py-00042" and as_id(" [ py-1 ] ") == "py-1" and as_id("`[b-2]`") == "b-2"
    assert as_id("[[x]]") == "[[x]]" and as_id("[") == "[" and as_id("[]") is None
    started = time.perf_counter()
    long = as_id(_SPACED_ID)
    assert time.perf_counter() - started < 0.1 and long is not None and len(long) <= 100


@pytest.mark.parametrize("language,reply", [
    ("javascript", "I don't know how to solve this."),
    ("javascript", "Sorry, I can't do that (it is unclear)."),
    ("javascript", "The answer is 42 = six times seven"),
    ("javascript", "let me know if this helps"),
    ("bash", "Sorry, I can't do that (it is unclear)."),
    ("bash", "The answer is 42 = six times seven"),
    ("bash", "echo hi and then it is done"),
    ("python", "Complexity: O(n)"),
    ("python", "x is not y"),
    ("python", "Yes"),
    (None, "I don't know how to solve this."),
    (None, "The answer is 42 = six times seven"),
])
def test_prose_is_not_taken_for_code(language: Optional[str], reply: str) -> None:
    with pytest.raises(ValueError, match="no code in the reply"):
        gen(reply, language)
    assert not looks_like_code(reply, language)


def test_code_between_sentences_without_fences() -> None:
    code = "def f(x):\n    return x"
    assert gen(f"Here is the solution:\n\n{code}\n", "python").code == code
    assert gen(f"Solution:\n{code}\n\nThis returns x unchanged. Hope it helps!", "python").code == code
    assert gen(f"**Python code:**\n    {code.replace(chr(10), chr(10) + '    ')}\n", None).code == code
    js = "const x = 5;\nconsole.log(x);"
    assert gen(f"Here is the code:\n{js}\nThis prints five.", "javascript").code == js
    assert gen("Run this script:\n#!/bin/bash\necho $1\n", "bash").code == "#!/bin/bash\necho $1"
    documented = ('def f(x):\n    """Return the sum of the values.\n\n    It runs in linear time.\n    """\n'
                  "    return sum(x)")
    assert gen(documented + "\n", "python").code == documented  # sentences in a docstring are the program's
    with pytest.raises(ValueError, match="no code in the reply"):  # prose inside: never a program cut short
        gen("import math\n\nThe answer uses math.sqrt.\nprint(math.sqrt(2))", "python")


def test_a_fence_inside_a_string_of_the_program_is_kept() -> None:
    program = 'def md(x):\n    return """```python\nprint(x)\n```"""'
    assert gen(json.dumps({"code": program + "\n"}), "python").code == program
    assert gen(json.dumps({"code": program}), None).code == program
    js = "const md = '```js';\nconsole.log(md + '\\n```');"
    assert gen(json.dumps({"code": js}), "javascript").code == js
    assert gen(json.dumps({"code": f"  {FENCE}python\nprint(1)\n{FENCE}  "}), "python").code == "print(1)"
    assert gen(json.dumps({"code": f"{FENCE}python\nprint(1)\n"}), "python").code == "print(1)"  # unclosed
    assert gen(json.dumps({"code": f"Use:\n{FENCE}js\nconsole.log(1)\n{FENCE}"}), "javascript").code == \
        "console.log(1)"
    assert gen(json.dumps({"code": f"{FENCE}python\\nprint(1)\\n{FENCE}"}), "python").code == "print(1)"


def test_only_a_fence_after_the_last_closed_block_is_an_unclosed_one() -> None:
    with pytest.raises(ValueError, match="no code in the reply"):
        gen(f'{FENCE}\n{{"a": 1}}\n{FENCE}\nDone.', "python")  # not '{"a": 1}\n```\nDone.' as the program
    assert gen(f"x\n{FENCE}json\n{{}}\n{FENCE}\nand\n{FENCE}python\nprint(1)\n", "python").code == "print(1)"
