"""SPEC §8: inputs of any shape get a clear error, never a crash and never a partial change.

A table of bad commands, each run through the command gate on SQLite and PostgreSQL against
a seeded ledger: the answer is an `Error` with a message that says what is wrong (and the usage
where the command was malformed), and the database — every ledger row, the audit trail and
its head — is exactly as before. Then a property test throws arbitrary text at the gate.
A deeper fuzz (more examples, card data) belongs with the benchmarks.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.commands.dispatch import run_fields, run_text
from bot.commands.reply import Changed, Error, Form, Reply
from bot.domain.change import verify_chain
from bot.domain.models import AuditEvent
from tests.support.ledger_state import check_invariants, context, dev_context, snapshot

pytestmark = pytest.mark.usefixtures("database")

SEED = (
    'customer add "Contoso Ltd"',
    'subscription add ACME-01 --customer "Contoso Ltd"',
    "product add TEAMS-SEATS --kind teams-seats --capacity 10",
    "product add NUMBERS-GB-GEO --kind numbers --country GB --capacity 10",
    "allocate 10 TEAMS-SEATS to ACME-01",
)


async def seed() -> None:
    for text in SEED:
        assert (await run_text(text, context())).ok, text


LONG = "X" * 10_000
USAGE, UNKNOWN, NOT_FOUND, REFUSED = "usage", "unknown-command", "not-found", "conflict"

# (command, error code, words the message must contain). A usage error also carries the usage.
BAD: list[tuple[str, str, tuple[str, ...]]] = [
    # unknown verbs
    ("frobnicate", UNKNOWN, ("There is no command 'frobnicate'", "help")),
    ("allocat 1 TEAMS-SEATS to ACME-01", UNKNOWN, ("Did you mean", "allocate")),
    ("product delete TEAMS-SEATS", UNKNOWN, ("product",)),
    ("DROP TABLE product", UNKNOWN, ("There is no command 'DROP'",)),
    ("🙂", UNKNOWN, ("There is no command",)),
    ("", USAGE, ("help",)),
    ("   \n\t ", USAGE, ("help",)),
    ("--dry-run", UNKNOWN, ("There is no command",)),
    # missing arguments
    ("allocate 1", USAGE, ("PRODUCT is missing",)),
    ("allocate 1 TEAMS-SEATS", USAGE, ("`to` is missing",)),
    ("allocate 1 TEAMS-SEATS to", USAGE, ("SUBSCRIPTION is missing",)),
    ("release 1 TEAMS-SEATS", USAGE, ("`from` is missing",)),
    ("product capacity TEAMS-SEATS", USAGE, ("N is missing",)),
    ("subscription add ACME-02", USAGE, ("--customer", "missing")),
    ("product add FAX --kind custom", USAGE, ("--capacity",)),
    ("product add NUMS --kind numbers --capacity 5", USAGE, ("--country",)),
    ("product add FAX", USAGE, ("--kind", "--license")),
    # extra arguments
    ("allocate 1 TEAMS-SEATS to ACME-01 please", USAGE, ("Unexpected 'please'",)),
    ("allocate 1 2 TEAMS-SEATS to ACME-01", USAGE, ("Expected `to`",)),
    ("whoami --verbose", USAGE, ("Unknown option --verbose",)),
    ("usage ACME-01 TEAMS-SEATS", USAGE, ("Unexpected 'TEAMS-SEATS'",)),
    ("product retire TEAMS-SEATS NUMBERS-GB-GEO", USAGE, ("Unexpected",)),
    ("customer add Fabrikam --tenant", USAGE, ("--tenant needs a value",)),
    (
        "product add FAX --kind custom --capacity 1 --colour red",
        USAGE,
        ("Unknown option --colour",),
    ),
    (
        "product add FAX --kind numbers --country GB --type toll free --capacity 1",
        USAGE,
        ("'free'",),
    ),
    # numbers: negative, zero, huge, floats, words
    ("allocate -1 TEAMS-SEATS to ACME-01", USAGE, ("positive whole number", "-1")),
    ("allocate 0 TEAMS-SEATS to ACME-01", USAGE, ("positive whole number", "0")),
    ("allocate 1000000001 TEAMS-SEATS to ACME-01", USAGE, ("too large", "1,000,000,000")),
    ("allocate 99999999999999999999 TEAMS-SEATS to ACME-01", USAGE, ("too large",)),
    ("allocate " + "9" * 400 + " TEAMS-SEATS to ACME-01", USAGE, ("too large",)),
    ("allocate 1.5 TEAMS-SEATS to ACME-01", USAGE, ("positive whole number", "1.5")),
    ("allocate 2.0 TEAMS-SEATS to ACME-01", USAGE, ("positive whole number",)),
    ("allocate 1e3 TEAMS-SEATS to ACME-01", USAGE, ("positive whole number",)),
    ("allocate 0x10 TEAMS-SEATS to ACME-01", USAGE, ("positive whole number",)),
    ("allocate ten TEAMS-SEATS to ACME-01", USAGE, ("positive whole number", "ten")),
    ("allocate NaN TEAMS-SEATS to ACME-01", USAGE, ("positive whole number",)),
    ("allocate ² TEAMS-SEATS to ACME-01", USAGE, ("positive whole number",)),
    ("product capacity TEAMS-SEATS -5", USAGE, ("positive whole number",)),
    ("product capacity TEAMS-SEATS 5000000000", USAGE, ("too large",)),
    ("product add FAX --kind custom --capacity -1", USAGE, ("--capacity",)),
    ("audit --limit -1", USAGE, ("--limit",)),
    ("products --page 0", USAGE, ("--page",)),
    # the ledger's own refusals (11 of 10 and friends)
    ("allocate 1 TEAMS-SEATS to ACME-01", REFUSED, ("Only 0 of TEAMS-SEATS left",)),
    ("allocate 11 NUMBERS-GB-GEO to ACME-01", REFUSED, ("Only 10", "11 asked")),
    ("product capacity TEAMS-SEATS 9", REFUSED, ("cannot go below what is allocated",)),
    ("release 11 TEAMS-SEATS from ACME-01", REFUSED, ("holds only 10",)),
    ("release 1 NUMBERS-GB-GEO from ACME-01", REFUSED, ("holds only 0",)),
    ("product add TEAMS-SEATS --kind custom --capacity 1", "exists", ("already exists",)),
    ("product add SEATS-TWO --kind teams-seats --capacity 1", "exists", ("TEAMS-SEATS",)),
    ("customer add 'contoso ltd'", "exists", ("already exists",)),
    ("subscription add ACME-01 --customer 'Contoso Ltd'", "exists", ("already exists",)),
    # unicode: emoji, right-to-left, zero-width, look-alikes
    ("allocate 1 🙂 to ACME-01", NOT_FOUND, ("No product named '🙂'",)),
    ("allocate 1 TEAMS-SEATS to ACME-01\u200b", NOT_FOUND, ("Did you mean", "ACME-01")),
    ("allocate 1 TEAMS\u200d-SEATS to ACME-01", NOT_FOUND, ("Did you mean", "TEAMS-SEATS")),
    ("allocate 1 ТЕАМS-SEATS to ACME-01", NOT_FOUND, ("TEAMS-SEATS",)),  # Cyrillic Т, Е, А
    ("product add 🙂 --kind custom --capacity 1", USAGE, ("naming convention",)),
    ("product add FAX\u200b --kind custom --capacity 1", USAGE, ("naming convention",)),
    ("product add ÉCRAN --kind custom --capacity 1", USAGE, ("naming convention",)),
    (
        "product add \u05e9\u05dc\u05d5\u05dd --kind custom --capacity 1",
        USAGE,
        ("naming convention",),
    ),
    ('customer add "\u202eEvil Corp"', USAGE, ("invisible",)),
    ("customer add \u200fשלום", USAGE, ("invisible",)),
    ("customer add Contoso\u200b", USAGE, ("invisible",)),
    ("customer add A\x00B", USAGE, ("control",)),
    ("allocate 1 TEAMS\x00-SEATS to ACME-01", USAGE, ("control",)),
    ("usage ACME\x00-01", USAGE, ("control",)),
    ("audit --actor a\x00b", USAGE, ("control",)),
    ("allocate 1 \ud800 to ACME-01", USAGE, ("invalid characters",)),
    ("customer add \x1b[31mRed", USAGE, ("control",)),
    # very long
    ("customer add " + LONG, USAGE, ("10013 characters long", "at most 4000")),
    ("product add " + LONG + " --kind custom --capacity 1", USAGE, ("characters long",)),
    ("allocate 1 TEAMS-SEATS to " + LONG, USAGE, ("characters long",)),
    ("customer add " + "x" * 300, USAGE, ("300 characters long", "at most 100")),
    ("customer add " + "x" * 600, USAGE, ("600 characters long", "at most 500")),
    ("product add " + "A" * 150 + " --kind custom --capacity 1", USAGE, ("150 characters long",)),
    ("allocate 1 " + "A" * 499 + " to ACME-01", NOT_FOUND, ("No product named",)),
    # SQL-ish
    ("customer add '; DROP TABLE product; --", USAGE, ("quote is not closed",)),
    ('allocate 1 "\'; DROP TABLE product; --" to ACME-01', NOT_FOUND, ("No product named",)),
    ("allocate 1 TEAMS-SEATS to \"ACME-01' OR '1'='1\"", NOT_FOUND, ("No subscription named",)),
    ('usage "x\' OR 1=1 --"', NOT_FOUND, ("No product named",)),
    ("usage %", NOT_FOUND, ("No product named '%'",)),
    ("allocate 1 TEAMS-SEAT_ to ACME-01", NOT_FOUND, ("TEAMS-SEATS",)),
    (
        'product add "ROBERT\'); DROP TABLE product;--" --kind custom --capacity 1',
        USAGE,
        ("naming",),
    ),
    (
        'subscription add ACME-02 --customer "x\'; DELETE FROM customer; --"',
        NOT_FOUND,
        ("customer",),
    ),
    ("products --country \"' OR ''='\"", USAGE, ("not a country code",)),
    # country codes
    ("product add NUMS --kind numbers --country XX --capacity 5", USAGE, ("'XX' is not a known",)),
    ("product add NUMS --kind numbers --country GBR --capacity 5", USAGE, ("not a country code",)),
    ("product add NUMS --kind numbers --country 44 --capacity 5", USAGE, ("not a country code",)),
    ("product add NUMS --kind numbers --country G --capacity 5", USAGE, ("not a country code",)),
    ("product add NUMS --kind numbers --country ÜK --capacity 5", USAGE, ("not a country code",)),
    ("product add NUMS --kind numbers --country '' --capacity 5", USAGE, ("--country", "empty")),
    (
        "product add NUMS --kind numbers --country GB --type landline --capacity 5",
        USAGE,
        ("--type",),
    ),
    ("products --country ZZ", USAGE, ("'ZZ' is not a known",)),
    ("product add LIC --license --country GB", USAGE, ("Only numbers",)),
    # unbalanced quotes
    ('customer add "Contoso', USAGE, ("quote is not closed",)),
    ("customer add “Contoso", USAGE, ("quote is not closed",)),
    ('"', USAGE, ("quote is not closed",)),
    # names that break the naming rule
    ("product add fax --kind custom --capacity 1", USAGE, ("naming convention", "[A-Z0-9]")),
    ("product add 'FAX LINES' --kind custom --capacity 1", USAGE, ("naming convention",)),
    ("product add FAX- --kind custom --capacity 1", USAGE, ("naming convention",)),
    ("product add FAX--LINES --kind custom --capacity 1", USAGE, ("naming convention",)),
    ("product add FAX_LINES --kind custom --capacity 1", USAGE, ("naming convention",)),
    ("subscription add acme-02 --customer 'Contoso Ltd'", USAGE, ("naming convention",)),
    # wrong words and other values
    ("product add FAX --kind gadgets --capacity 1", USAGE, ("--kind must be",)),
    ("subscription add ACME-02 --customer 'Contoso Ltd' --mode teams", USAGE, ("--mode must be",)),
    ("products hardware", USAGE, ("CATEGORY must be",)),
    ("customer add Fabrikam --tenant not-a-guid", USAGE, ("not a GUID",)),
    ("audit --since yesterday", USAGE, ("--since",)),
    ("audit --since 100000d", USAGE, ("--since",)),
    ("allocate 1 TEAMS-SEATS to ACME-01 --dry-run=no", USAGE, ("takes no value",)),
    ("allocate 1 TEAMS-SEATS to NOPE-01", NOT_FOUND, ("No subscription named 'NOPE-01'",)),
    ("product retire NOPE", NOT_FOUND, ("No product named 'NOPE'",)),
    ("subscriptions --customer Nobody", NOT_FOUND, ("No customer named 'Nobody'",)),
    ("help nosuchthing", UNKNOWN, ("There is no command",)),
]


async def check_refused(text: str, code: str, words: tuple[str, ...]) -> None:
    before = await snapshot()
    reply = await run_text(text, context())
    assert isinstance(reply, Error), reply
    assert reply.code == code, (reply.code, reply.text)
    for word in words:
        assert word in reply.text, (word, reply.text)
    assert "Traceback" not in reply.text and "Error(" not in reply.text
    assert len(reply.text) < 1000
    if code == USAGE and reply.title.startswith("Usage:"):
        assert reply.usage and reply.title.removeprefix("Usage: ") in reply.usage
    assert reply.data == {"error": code, "message": reply.text, "usage": reply.usage}
    assert await snapshot() == before


# One test per row on SQLite (a failure names its row) ...
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("text", "code", "words"), BAD, ids=[f"{i:03d}-{t[:40]!r}" for i, (t, *_) in enumerate(BAD)]
)
async def test_a_bad_command_gets_a_clear_error_and_changes_nothing(
    text: str, code: str, words: tuple[str, ...]
) -> None:
    await seed()
    await check_refused(text, code, words)


# ... and the whole table in one go on PostgreSQL, which refuses some text SQLite stores
# (NUL, lone surrogates): emptying PostgreSQL per row would take a minute.
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_every_bad_command_on_postgresql(database: str) -> None:
    await seed()
    failures = []
    for text, code, words in BAD:
        try:
            await check_refused(text, code, words)
        except AssertionError as exc:
            failures.append((text[:60], str(exc)[:300]))
    assert not failures


async def test_valid_unicode_names_are_accepted() -> None:
    """The other side of the table: names in other scripts are fine where text is free."""
    await seed()
    for name in ("Zürich Versicherung AG", "株式会社コントソ", "שלום בע״מ", "O’Brien & Sons 🙂"):
        reply = await run_text(f'customer add "{name}"', context())
        assert isinstance(reply, Changed) and reply.after and reply.after["name"] == name
    await check_invariants()
    assert (await verify_chain())[0]  # hashed and stored alike on both databases


async def test_a_name_is_one_name_however_its_accents_are_encoded() -> None:
    await seed()
    composed, decomposed = "Z\u00fcrich AG", "Zu\u0308rich AG"
    assert (await run_text(f'customer add "{decomposed}"', context())).ok
    before = await snapshot()
    reply = await run_text(f'customer add "{composed}"', context())
    assert isinstance(reply, Error) and reply.code == "exists"
    assert await snapshot() == before
    reply = await run_text(f'subscription add ZUR-01 --customer "{composed}" --dry-run', context())
    assert isinstance(reply, Changed) and reply.after and reply.after["customer"] == composed


async def test_someone_who_is_not_an_administrator_changes_nothing_and_learns_nothing() -> None:
    await seed()
    stranger = dev_context(("oid-admin",), object_id="oid-guest")
    before = await snapshot()
    for text in (
        *SEED,
        "release 1 TEAMS-SEATS from ACME-01",
        "products",
        "usage ACME-01",
        "allocate 1 NOPE to NOWHERE",
        "product capacity TEAMS-SEATS 99",
    ):
        reply = await run_text(text, stranger)
        assert isinstance(reply, Error) and reply.code == "forbidden", text
        for secret in ("Contoso", "TEAMS-SEATS", "ACME-01", "NOPE", "Did you mean"):
            assert secret not in reply.text, (text, reply.text)
    assert await snapshot() == before


CARD_DATA = [
    (
        "allocate",
        {"quantity": "1; DROP TABLE product", "product": "TEAMS-SEATS", "subscription": "ACME-01"},
    ),
    ("allocate", {"quantity": [1], "product": "TEAMS-SEATS", "subscription": "ACME-01"}),
    ("allocate", {"quantity": 1, "product": {"$ne": None}, "subscription": "ACME-01"}),
    ("allocate", {"quantity": 1, "product": "TEAMS\x00", "subscription": "ACME-01"}),
    (
        "allocate",
        {"quantity": 1, "product": "TEAMS-SEATS", "subscription": "ACME-01", "admin": True},
    ),
    ("allocate", {"quantity": True, "product": "TEAMS-SEATS", "subscription": "ACME-01"}),
    ("allocate", {"quantity": 1e300, "product": "TEAMS-SEATS", "subscription": "ACME-01"}),
    ("product capacity", {"name": "TEAMS-SEATS", "capacity": -1}),
    ("customer add", {"name": "x" * 10_000}),
    ("customer add", {"name": None}),
]


@pytest.mark.parametrize(("command", "data"), CARD_DATA)
async def test_wrong_card_data_changes_nothing(command: str, data: object) -> None:
    """Card submissions reach the same argument models: wrong types are refused, not coerced."""
    await seed()
    before = await snapshot()
    reply = await run_fields(command, data, context())  # type: ignore[arg-type]
    assert isinstance(reply, (Error, Form)), reply
    if isinstance(reply, Error):
        assert reply.code in {USAGE, REFUSED}, reply
    else:
        assert reply.errors
    assert await snapshot() == before


# ----- property: arbitrary text never crashes and never changes anything it should not ----

WORDS = st.sampled_from(
    [
        "allocate",
        "release",
        "product",
        "add",
        "capacity",
        "retire",
        "customer",
        "subscription",
        "products",
        "customers",
        "subscriptions",
        "usage",
        "audit",
        "verify",
        "help",
        "whoami",
        "to",
        "from",
        "TO",
        "TEAMS-SEATS",
        "NUMBERS-GB-GEO",
        "ACME-01",
        "Contoso Ltd",
        "FAX",
        "--kind",
        "custom",
        "numbers",
        "--capacity",
        "--country",
        "GB",
        "--type",
        "mobile",
        "--license",
        "--customer",
        "--dry-run",
        "--limit",
        "--since",
        "7d",
        "--page",
        "--tenant",
        "0",
        "1",
        "3",
        "-1",
        "10",
        "1e3",
        "99999999999",
        '"',
        "'",
        "“",
        "’",
        "🙂",
        "\u200b",
        "\x00",
        "%",
        "_",
        "';--",
        "=",
        "--x=1",
    ]
)
COMMANDS = st.one_of(
    st.text(max_size=200),
    st.lists(WORDS, max_size=10).map(" ".join),
    st.tuples(st.lists(WORDS, max_size=6), st.text(max_size=30)).map(
        lambda parts: " ".join(parts[0]) + " " + parts[1]
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=COMMANDS)
async def test_arbitrary_text_never_crashes_or_changes_what_it_should_not(text: str) -> None:
    if not await AuditEvent.exists():
        await seed()
    before = await snapshot()
    reply = await run_text(text, context())
    assert isinstance(reply, Reply)
    if isinstance(reply, Error):
        assert reply.code != "internal", (text, reply.text)
    if isinstance(reply, Changed) and not reply.dry_run:
        # A valid change: exactly one more audit event, and the invariants hold.
        assert len((await snapshot())["audit"]) == len(before["audit"]) + 1, text
        await check_invariants()
    else:
        assert await snapshot() == before, (text, reply)
