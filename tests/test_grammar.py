"""The one grammar (SPEC §4): usage lines are the grammar; quoting, options anywhere, keywords
and verbs in any case; `help`. What a command understood is read back from its --dry-run answer,
so these tests go through the same gate as Teams and the CLI."""

from __future__ import annotations

from typing import Any

import pytest

from bot.commands.dispatch import run_text
from bot.commands.grammar import UsageError, compile_usage, match, tokenize
from bot.commands.registry import REGISTRY, Access, find
from bot.commands.reply import Changed, Error, Form, Reply, Table, Usage
from tests.support.ledger_state import context

# The grammar does not depend on the database: SQLite is enough.
pytestmark = [
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
    pytest.mark.usefixtures("database"),
]


async def run(text: str) -> Reply:
    return await run_text(text, context())


async def dry(text: str) -> dict[str, Any]:
    """The `after` of a dry run: what the command understood."""
    reply = await run(text + " --dry-run")
    assert isinstance(reply, Changed) and reply.dry_run, (text, reply)
    assert reply.after is not None
    return reply.after


async def usage_error(text: str, *words: str) -> Error:
    reply = await run(text)
    assert isinstance(reply, Error) and reply.code == "usage", (text, reply)
    for word in words:
        assert word in reply.text, (text, reply.text)
    return reply


async def seed() -> None:
    for text in (
        'customer add "Contoso Ltd"',
        'subscription add ACME-01 --customer "Contoso Ltd"',
        "product add TEAMS-SEATS --kind teams-seats --capacity 10",
    ):
        assert (await run(text)).ok, text


# ----- the usage lines are the grammar ------------------------------------------------------


def test_every_usage_line_compiles_and_names_real_arguments() -> None:
    assert {
        "help",
        "whoami",
        "products",
        "product add",
        "product capacity",
        "product retire",
        "customers",
        "customer add",
        "subscriptions",
        "subscription add",
        "allocate",
        "release",
        "usage",
        "audit",
        "audit verify",
    } <= set(REGISTRY)
    for name, spec in REGISTRY.items():
        assert spec.pattern.verb == tuple(name.split()), name
        for line in spec.usages:
            pattern = compile_usage(line)
            # A help line may show a sibling (`number assign next ...` under `number assign`)
            # or an example (`digest here daily at 08:00` reads as a longer verb): it belongs
            # to the registered command with the longest matching verb.
            owner = find(list(pattern.verb))
            assert (
                owner is not None and pattern.verb[: len(owner.pattern.verb)] == owner.pattern.verb
            )
            # Every option a help line shows is one that command accepts.
            shown = pattern.value_options | pattern.flag_options
            assert shown <= owner.pattern.value_options | owner.pattern.flag_options, line
        # Every placeholder and option maps onto a field of the command's arguments.
        for field in spec.labels():
            assert field in spec.args.model_fields, (name, field)
        if spec.mutating:
            assert "--dry-run" in spec.pattern.flag_options, name


def test_usage_notation() -> None:
    p = compile_usage("pack create NAME LICENSE [LICENSE...] [--sku REF] [--bulk]")
    assert p.verb == ("pack", "create")
    assert (p.value_options, p.flag_options) == ({"--sku"}, {"--bulk"})
    parsed = match(p, ["GOLD", "E5", "PHONE", "--bulk", "AUDIO"], "pack create")
    assert parsed.values == {"NAME": "GOLD", "LICENSE": ["E5", "PHONE", "AUDIO"]}
    assert parsed.options == {"--bulk": True}
    # A comma list and a range are one token.
    p = compile_usage("license assign LICENSE to UPN[,UPN...]")
    assert match(p, ["E5", "TO", "a@x,b@x"], "license assign").values == {
        "LICENSE": "E5",
        "UPN": "a@x,b@x",
    }
    with pytest.raises(ValueError):
        compile_usage("broken [NAME")
    with pytest.raises(ValueError):
        compile_usage("broken NAME]")


# ----- tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ('customer add "Contoso Ltd"', ["customer", "add", "Contoso Ltd"]),
        ("customer add 'Contoso Ltd'", ["customer", "add", "Contoso Ltd"]),
        ("customer add “Contoso Ltd”", ["customer", "add", "Contoso Ltd"]),  # Teams, phones
        ("customer add ‘Contoso Ltd’", ["customer", "add", "Contoso Ltd"]),
        ("customer add O’Brien", ["customer", "add", "O’Brien"]),  # an apostrophe, not a quote
        ("reject AB12 it's too much", ["reject", "AB12", "it's", "too", "much"]),
        ('user add a@b.example --name="Ada L"', ["user", "add", "a@b.example", "--name=Ada L"]),
        ("customer add “O’Brien Ltd”", ["customer", "add", "O’Brien Ltd"]),
        ('customer add "Say \\"hi\\""', ["customer", "add", 'Say "hi"']),
        ("customer  add\u00a0Contoso\t", ["customer", "add", "Contoso"]),
        ("customer add #1", ["customer", "add", "#1"]),  # no comments
        ('customer add ""', ["customer", "add", ""]),
    ],
)
def test_tokens(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


@pytest.mark.parametrize(
    "text", ['customer add "Contoso', "customer add 'Contoso", "customer add “Contoso"]
)
def test_an_unclosed_quote_is_a_clear_error(text: str) -> None:
    with pytest.raises(UsageError, match="quote is not closed"):
        tokenize(text)


# ----- through the gate ---------------------------------------------------------------------


async def test_quoted_names() -> None:
    await seed()
    assert (await dry('customer add "Fabrikam Inc"'))["name"] == "Fabrikam Inc"
    assert (await dry("customer add “Fabrikam Inc”"))["name"] == "Fabrikam Inc"
    assert (await dry("customer add ‘Fabrikam Inc’"))["name"] == "Fabrikam Inc"
    assert (await dry("customer add O’Brien"))["name"] == "O’Brien"
    assert (await dry("customer add “Zürich Versicherung AG”"))["name"] == "Zürich Versicherung AG"
    after = await dry("subscription add ACME-02 --customer “contoso ltd”")
    assert after["customer"] == "Contoso Ltd"


async def test_options_go_anywhere_after_the_verb() -> None:
    await seed()
    expected = await dry("product add FAX --kind custom --capacity 5 --unit line")
    for text in (
        "product add --kind custom FAX --capacity 5 --unit line",
        "product add --capacity 5 --unit line --kind custom FAX",
        "product add FAX --unit=line --kind=custom --capacity=5",
        "product add FAX --KIND custom --Capacity 5 --unit line",
    ):
        assert await dry(text) == expected, text
    reply = await run("allocate --dry-run 3 TEAMS-SEATS to ACME-01")
    assert isinstance(reply, Changed) and reply.dry_run
    reply = await run("allocate 3 --dry-run TEAMS-SEATS to ACME-01")
    assert isinstance(reply, Changed) and reply.dry_run


async def test_verbs_keywords_and_choice_words_ignore_case() -> None:
    await seed()
    for text in (
        "ALLOCATE 2 TEAMS-SEATS TO ACME-01",
        "Allocate 2 teams-seats To acme-01",
        "allocate 2 Teams-Seats to Acme-01",
    ):
        reply = await run(text + " --dry-run")
        assert isinstance(reply, Changed) and reply.after == {
            "allocated": 2,
            "product_allocated": 2,
        }
    assert (await run("allocate 4 TEAMS-SEATS to ACME-01")).ok
    reply = await run("Release 1 TEAMS-SEATS FROM acme-01 --DRY-RUN")
    assert isinstance(reply, Changed) and reply.dry_run
    after = await dry(
        "Product Add NUMBERS-GB-MOB --kind Numbers --country gb --type MOBILE --capacity 5"
    )
    assert (after["kind"], after["country"], after["type"]) == ("numbers", "GB", "mobile")
    after = await dry("subscription add ACME-02 --customer 'Contoso Ltd' --mode Operator-Connect")
    assert after["mode"] == "operator-connect"
    for text in (
        "PRODUCTS",
        "products Technical",
        "products LICENSES --kind LICENSE",
        "USAGE acme-01",
    ):
        assert isinstance(await run(text), (Table, Usage)), text


async def test_keywords_must_be_in_place() -> None:
    await seed()
    await usage_error("allocate 2 TEAMS-SEATS ACME-01", "Expected `to`", "'ACME-01'")
    await usage_error("allocate 2 TEAMS-SEATS from ACME-01", "Expected `to`")
    await usage_error("release 2 TEAMS-SEATS to ACME-01", "Expected `from`")
    await usage_error("allocate 2 TEAMS-SEATS to", "SUBSCRIPTION is missing")


async def test_unknown_repeated_and_malformed_options() -> None:
    await seed()
    error = await usage_error("products --colour red", "Unknown option --colour")
    assert error.usage and error.usage.startswith("products")
    await usage_error("allocate 1 TEAMS-SEATS to ACME-01 --force", "Unknown option --force")
    await usage_error(
        "product add FAX --kind custom --capacity 1 --capacity 2", "--capacity is given twice"
    )
    await usage_error("product add FAX --kind custom --capacity", "--capacity needs a value")
    await usage_error("allocate 1 TEAMS-SEATS to ACME-01 --dry-run=yes", "--dry-run takes no value")
    await usage_error("product add FAX --kind gizmo --capacity 1", "--kind must be")
    await usage_error("product add FAX --capacity 1", "--kind", "--license")
    await usage_error(
        "product add FAX --kind custom --license --capacity 1", "Use either --kind or --license"
    )


async def test_a_change_typed_alone_opens_its_form_and_a_read_does_not() -> None:
    await seed()
    reply = await run("allocate")
    assert isinstance(reply, Form) and reply.command == "allocate"
    assert isinstance(await run("products"), Table)


async def test_help_lists_every_command_and_explains_one() -> None:
    reply = await run("help")
    assert isinstance(reply, Table)
    assert {row["command"] for row in reply.data} == set(REGISTRY)
    assert all(
        row["admin_only"] == (REGISTRY[row["command"]].access is not Access.PUBLIC)
        for row in reply.data
    )

    reply = await run("HELP allocate")
    assert isinstance(reply, Table)
    assert reply.data == [
        {
            "command": "allocate",
            "usage": ["allocate N PRODUCT to SUBSCRIPTION [--dry-run]"],
            "summary": REGISTRY["allocate"].summary,
            "admin_only": True,
            "mutating": True,
        }
    ]
    reply = await run("help product")
    assert {row["command"] for row in reply.data} == {
        "product add",
        "product capacity",
        "product retire",
    }
    reply = await run("help product add")
    assert [row["command"] for row in reply.data] == ["product add"]
    assert any("--license" in line for line in reply.data[0]["usage"])
    reply = await run("help alocate")
    assert isinstance(reply, Error) and reply.suggestions == ["allocate"]


async def test_help_and_whoami_are_open_to_everyone() -> None:
    from tests.support.ledger_state import dev_context

    stranger = dev_context((), object_id="oid-stranger")
    assert isinstance(await run_text("help allocate", stranger), Table)
    reply = await run_text("whoami", stranger)
    assert reply.ok and reply.data["admin"] is False and reply.data["object_id"] == "oid-stranger"
    refused = await run_text("allocate 1 TEAMS-SEATS to ACME-01", stranger)
    assert isinstance(refused, Error) and refused.code == "forbidden"


async def test_unknown_commands_get_a_guess_never_a_fuzzy_match() -> None:
    for text, guess in (
        ("alocate 1 X to Y", "allocate"),
        ("prodcts", "products"),
        ("product ad FAX", "product add"),
    ):
        reply = await run(text)
        assert isinstance(reply, Error) and reply.code == "unknown-command", text
        assert guess in reply.suggestions, (text, reply.suggestions)
    reply = await run("launch the rockets")
    assert isinstance(reply, Error) and reply.code == "unknown-command"
    assert "help" in reply.text
