"""Personal data and secrets in generated text: where each is, of which kind, and the text with each replaced.

A dataset that ships an e-mail address, a card number or an API key copied from a prompt is a dataset that
must be pulled, so this runs on every text the gate sees. Precision comes first: a math answer, a date, a
price or a code sample that merely looks like data must pass. The well-kept libraries decide what each kind
is (detect-secrets' plugins for secrets, phonenumbers for phones, python-stdnum's checksums for cards and
IBANs, the standard library's `ipaddress` for addresses); this module finds candidate spans cheaply, asks
them, and leaves out what identifies nobody:

- e-mail: not RFC 2606 placeholders (example.com/.net/.org and their subdomains, *.example, *.test,
  *.invalid, *.localhost), not `git@host` (an SSH remote), not `icon@2x.png` (an image name).
- phone: numbers that phonenumbers finds VALID (Leniency.VALID) in international format (`+44 ...`) or in
  the national format of US/CA or, when they start with the trunk prefix 0, of GB, FR, IN or AU (not DE:
  its open numbering plan takes ZIP codes and ISSNs for phones), and only when written like one: digit
  groups split by one separator or an area code in parentheses. A bare run of digits in national format
  (`4155552671`) is an order number as often as a phone, a single dot makes a decimal (`41.29465463`), and
  dates, times, prices and sums are not valid numbers to phonenumbers.
- credit card: 13-19 digits, bare or printed in groups (4-4-4-4, 4-4-4-4-3, 4-6-5, 4-6-4) split by spaces or
  by dashes, passing Luhn and starting with a prefix some issuer uses for that length; a longer run of
  numbers (a table) is not a card.
- IBAN: two letters, two check digits and the BBAN, valid by `stdnum.iban` (mod 97 and the country's format).
- IP address: only globally routable unicast addresses (`is_global`): loopback, private, link-local,
  shared, multicast, documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) and the
  well-known public DNS resolvers identify no one; dotted numbers after "version", "v", "Python", "==",
  "section", ... are version or section numbers.
- secret: detect-secrets' token-shaped plugins, run as their own regular expressions on the text in memory
  (never `verify`, which calls the providers over the network), plus `sk-...` keys of OpenAI's and
  Anthropic's newer shapes and whole PEM private-key blocks; and high-entropy strings, measured by
  detect-secrets' Shannon entropy at its default limits: base64-like tokens of >= 20 characters with a
  digit, an upper- and a lowercase letter and entropy > 4.5 bits (in practice random tokens of ~28+
  characters), and hex tokens of >= 32 characters with a digit and a letter and entropy > 3.0 (hex API keys
  and digests cannot be told apart, so a full 40-hex git sha counts; a short sha in prose, a UUID, a number
  or a base64 of a few words does not). Base64-like tokens must also change character class (upper, lower,
  digit, symbol) at >= 40% of their characters, as random ones do (~64%) and identifiers made of words do
  not; ids in a link's path (a playlist, a video) are not secrets; AWS's documentation keys (`...EXAMPLE`)
  are placeholders, as are basic-auth passwords such as `password` or `{password}`.

Where spans overlap, a typed finding beats a phone and both beat a high-entropy string; then the longest wins.
The only files read are the libraries' modules and data, on first use, cached for the process; nothing here
touches the network.
"""
from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

KINDS = ("email", "phone", "credit_card", "iban", "ip_address", "secret")
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in KINDS}


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    start: int  # span in the text, [start, end)
    end: int
    detail: str  # what it is, e.g. "Visa", "GB", "GitHub Token"; never the value


def find_pii(text: str) -> list[Finding]:
    """Every finding in `text`, sorted by start and non-overlapping."""
    ranked = [(0, f) for f in (*_emails(text), *_cards(text), *_ibans(text), *_ips(text), *_typed_secrets(text))]
    ranked += [(1, f) for f in _phones(text)]
    ranked += [(2, f) for f in _high_entropy(text)]
    ranked.sort(key=lambda rf: (rf[0], rf[1].start - rf[1].end, rf[1].start))
    taken: list[Finding] = []
    for _, finding in ranked:
        if all(finding.end <= t.start or t.end <= finding.start for t in taken):
            taken.append(finding)
    return sorted(taken, key=lambda f: f.start)


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with each finding's span replaced by its kind's placeholder, e.g. "[EMAIL]"."""
    parts, at = [], 0
    for finding in sorted(findings, key=lambda f: f.start):
        parts += [text[at:finding.start], PLACEHOLDERS[finding.kind]]
        at = finding.end
    return "".join(parts) + text[at:]


# e-mail

_EMAIL = re.compile(r"(?<![\w.%+-])([A-Za-z0-9][\w.%+-]{0,63})@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                    r"([A-Za-z]{2,24}))(?![\w-]|\.[A-Za-z0-9])")
_RESERVED_DOMAIN = re.compile(r"(?:^|\.)(?:example\.(?:com|net|org)|example|test|invalid|localhost)$", re.IGNORECASE)
_URL_AUTHORITY = re.compile(r"://[^\s/@]*$")
_IMAGE_SUFFIXES = {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp"}


def _emails(text: str) -> Iterator[Finding]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        local, domain, tld = m.groups()
        if local.lower() == "git" or tld.lower() in _IMAGE_SUFFIXES or _RESERVED_DOMAIN.search(domain):
            continue
        if _URL_AUTHORITY.search(text, max(0, m.start() - 200), m.start()):  # user:password@host, not an address
            continue
        yield Finding("email", m.start(), m.end(), "e-mail address")


# phone

_NATIONAL_REGIONS = ("GB", "FR", "IN", "AU")  # read in their national format when a number starts with 0
# a written phone number: a country code, an area code, digit groups split by one separator each; a bare run of
# digits only in international format, and a single dot makes it a decimal, not a phone
_E164 = r"\+\d{7,15}"
_HEAD = r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}"
_GROUP = r"[ .-]\d{1,8}"
_PHONE = re.compile(rf"{_E164}|{_HEAD}(?:{_GROUP}){{0,5}}")
_PHONE_CANDIDATE = re.compile(rf"(?=[+(\d])(?<![\w.+-])(?:{_E164}|{_HEAD}(?:{_GROUP}){{1,5}})(?!\w)")
_CONTEXT = 12  # characters the matcher sees either side of a candidate: it tells a timestamp by what follows


@cache
def _phonenumbers():
    import phonenumbers

    return phonenumbers


def _written_like_a_phone(raw: str) -> bool:
    """International numbers have 8-15 digits; national ones in the regions read here 10 or 11 (with a 0 or a 1)."""
    digits = sum(c.isdigit() for c in raw)
    length_fits = 8 <= digits <= 15 if raw.startswith("+") else 10 <= digits <= 11
    return length_fits and raw.count(".") != 1 and bool(_PHONE.fullmatch(raw))


def _phones(text: str) -> Iterator[Finding]:
    """phonenumbers decides; it reads only the candidates written like a phone, in the regions they can be from."""
    for candidate in _PHONE_CANDIDATE.finditer(text):
        start, raw = candidate.start(), candidate.group()
        # a number right after a phone ("555-0187 24 hours") hides it from the matcher: drop groups from the end
        for end in (len(raw), *(i for i in range(len(raw) - 1, 0, -1) if raw[i] in " .-" and raw[i - 1].isdigit())):
            if _written_like_a_phone(raw[:end]):
                found = list(_valid_phones(text, start, start + end, context=end == len(raw)))
                yield from found
                if found:
                    break


def _valid_phones(text: str, start: int, end: int, context: bool) -> Iterator[Finding]:
    pn = _phonenumbers()
    at = max(0, start - _CONTEXT)
    window = text[at:end + _CONTEXT if context else end]
    trunk_prefix = text[start:end].lstrip("(").startswith("0")
    for region in _NATIONAL_REGIONS if trunk_prefix else ("US",):  # "+..." reads the same anywhere
        found = [m for m in pn.PhoneNumberMatcher(window, region, leniency=pn.Leniency.VALID)
                 if start <= at + m.start and at + m.end <= end and _written_like_a_phone(m.raw_string)]
        for m in found:
            yield Finding("phone", at + m.start, at + m.end, pn.region_code_for_number(m.number) or "phone number")
        if found:
            return


# credit card

# a bare run of 13-19 digits, or groups of 3-6 digits split by spaces or by dashes
_CARD = re.compile(r"\d(?<![\w-]\d)(?<!\d[.,]\d)(?:\d{12,18}|\d{2,5}(?: \d{3,6}){2,6}|\d{2,5}(?:-\d{3,6}){2,6})"
                   r"(?![\w-]|[.,]\d)")
# how cards are printed: 16 and 19 digits in fours, American Express 4-6-5, Diners Club 4-6-4
_CARD_LAYOUTS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 5)}
# issuer, its number lengths and its IIN prefixes (ranges inclusive, compared on the prefix's own length)
_ISSUERS = (
    ("Visa", (13, 16, 19), ((4, 4),)),
    ("Mastercard", (16,), ((51, 55), (2221, 2720))),
    ("American Express", (15,), ((34, 34), (37, 37))),
    ("Discover", (16, 17, 18, 19), ((6011, 6011), (644, 649), (65, 65))),
    ("JCB", (16, 17, 18, 19), ((3528, 3589),)),
    ("Diners Club", (14, 15, 16, 17, 18, 19), ((300, 305), (36, 36), (38, 39))),
    ("UnionPay", (16, 17, 18, 19), ((62, 62),)),
    ("Maestro", (13, 14, 15, 16, 17, 18, 19), ((5018, 5018), (5020, 5020), (5038, 5038), (5893, 5893), (6304, 6304),
                                            (6759, 6759), (6761, 6763))),
)


@cache
def _stdnum():
    import stdnum.iban
    import stdnum.luhn

    return stdnum


def _issuer(digits: str) -> str | None:
    for name, lengths, ranges in _ISSUERS:
        if len(digits) in lengths and any(lo <= int(digits[:len(str(lo))]) <= hi for lo, hi in ranges):
            return name
    return None


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        layout = tuple(len(g) for g in re.split(r"[ -]", m.group()))
        digits = re.sub(r"[ -]", "", m.group())
        if len(layout) > 1 and layout not in _CARD_LAYOUTS:  # a run of numbers in a table, not a card
            continue
        issuer = 13 <= len(digits) <= 19 and _issuer(digits)
        if issuer and _stdnum().luhn.is_valid(digits):
            yield Finding("credit_card", m.start(), m.end(), issuer)


# IBAN

_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}\b")


def _ibans(text: str) -> Iterator[Finding]:
    for m in _IBAN.finditer(text):
        raw = m.group()
        # the pattern may run on into a following word or number: try the ends at each space, longest first
        for end in (len(raw), *(i for i in range(len(raw) - 1, 0, -1) if raw[i] == " ")):
            if _stdnum().iban.is_valid(raw[:end]):
                yield Finding("iban", m.start(), m.start() + end, f"{raw[:2]} IBAN")
                break


# IP address

_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w-]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])")
_VERSION_BEFORE = re.compile(r"(?:\b(?:version|ver|release|build|python|node|java|rev|revision|section|chapter|step|"
                             r"clause|rule|item|v)\.?:?\s*|==|>=|<=|~=|!=|\^|~|§\s*)$", re.IGNORECASE)
_PUBLIC_RESOLVERS = {"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222",
                     "208.67.220.220", "2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111",
                     "2606:4700:4700::1001", "2620:fe::fe", "2620:fe::9"}
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


def _identifies_someone(candidate: str) -> bool:
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if not ip.is_global or ip.is_multicast or str(ip) in _PUBLIC_RESOLVERS:
        return False
    return ip.version == 4 or ip in _GLOBAL_UNICAST_V6


def _ips(text: str) -> Iterator[Finding]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if _identifies_someone(m.group()) and not _VERSION_BEFORE.search(text[max(0, m.start() - 16):m.start()]):
                yield Finding("ip_address", m.start(), m.end(), "IPv4")
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            if _identifies_someone(m.group()):
                yield Finding("ip_address", m.start(), m.end(), "IPv6")


# secrets


class _SecretPattern(NamedTuple):
    secret_type: str
    pattern: re.Pattern
    in_group: bool  # the secret is the first non-empty group (the pattern also matches a keyword or URL around it)
    check: Callable[[str], bool]  # of the value: the plugin's own validation, or a test for placeholders
    needle: str = ""  # run the pattern only on texts that contain this


@cache
def _secret_patterns() -> tuple[_SecretPattern, ...]:
    """The regular expressions of detect-secrets' plugins that name a token's shape, and a few of our own.

    Left out: KeywordDetector (any value after "password" or "token"), IbmCloudIamDetector (its prefix is
    optional, so it flags any 44-character value assigned to a key), ArtifactoryDetector (its password shape
    matches capitalised words such as "APEXLEGENDS"), CloudantDetector, SoftlayerDetector and IbmCosHmacDetector
    (assignments with optional prefixes: they cost half the scan, and their 48- and 64-character hex secrets are
    high-entropy strings anyway), IPPublicDetector (addresses are found above), PrivateKeyDetector (it flags a
    header line alone, as in prose that explains the format; `_PEM` takes a block with its key lines whole)
    and the high-entropy plugins (used on their own below).
    """
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.discord import DiscordBotTokenDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.mailchimp import MailchimpDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.sendgrid import SendGridDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.square_oauth import SquareOAuthDetector
    from detect_secrets.plugins.stripe import StripeDetector
    from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
    from detect_secrets.plugins.twilio import TwilioKeyDetector

    in_group = (AWSKeyDetector, BasicAuthDetector, NpmDetector)
    patterns = []
    for plugin_class in (AWSKeyDetector, AzureStorageKeyDetector, BasicAuthDetector, DiscordBotTokenDetector,
                         GitHubTokenDetector, GitLabTokenDetector, JwtTokenDetector, MailchimpDetector, NpmDetector,
                         OpenAIDetector, PypiTokenDetector, SendGridDetector, SlackDetector, SquareOAuthDetector,
                         StripeDetector, TelegramBotTokenDetector, TwilioKeyDetector):
        plugin = plugin_class()
        if plugin_class is BasicAuthDetector:
            check = _not_a_placeholder
        elif plugin_class.analyze_string is not RegexBasedDetector.analyze_string:  # it validates (JWT: the JSON)
            check = _validated_by(plugin)
        else:
            check = _any
        # the patterns that cost most on texts that cannot match them, and a fixed part each needs
        needle = {MailchimpDetector: "-us", NpmDetector: "_authToken"}.get(plugin_class, "")
        patterns += [_SecretPattern(plugin.secret_type, p, plugin_class in in_group, check, needle)
                     for p in plugin.denylist]
    patterns += [_SecretPattern("OpenAI-style API Key", _SK_KEY, False, _has_letters_and_digits, "sk-"),
                 _SecretPattern("Private Key", _PEM, False, _any, "PRIVATE KEY")]
    return tuple(patterns)


def _validated_by(plugin) -> Callable[[str], bool]:
    return lambda value: value in set(plugin.analyze_string(value))


def _any(value: str) -> bool:
    return True


_AWS_EXAMPLE = "EXAMPLE"  # AWS's documentation keys (AKIAIOSFODNN7EXAMPLE, ...EXAMPLEKEY) are in every tutorial
_PLACEHOLDER = re.compile(r"<[^>]*>|\{[^}]*\}|\$\w+|%\(\w+\)s|\*+|x+|\.+"
                          r"|(?:my|your)?[_-]?(?:pass(?:word)?|passwd|pwd|pw|secret|changeme|token)\d*", re.IGNORECASE)


def _not_a_placeholder(value: str) -> bool:
    """`postgres://user:password@host` and `{schema}://{user}:{password}@{host}` are examples, not credentials."""
    return not _PLACEHOLDER.fullmatch(value)


def _has_letters_and_digits(value: str) -> bool:
    """A key has both; `sk-xxxxxxxxxxxxxxxxxxxxxxxx` and `sk-your-api-key-goes-here` are placeholders."""
    return bool(re.search(r"\d", value) and re.search(r"[A-Za-z]", value))


# OpenAI's project, service-account and admin keys and Anthropic's, which detect-secrets' OpenAI shape predates
_SK_KEY = re.compile(r"sk-(?<![\w-]sk-)(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d\d-)?[A-Za-z0-9_-]{20,}(?![\w-])")
# a PEM block with its key lines, to its end line or, when that is missing, to the last key line
_PEM = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----\s*(?:[\w-]+: [^\n]*\s*)*[A-Za-z0-9+/=]{16,}"
                  r"(?:.{0,10000}?-----END \1-----|(?:\s*[A-Za-z0-9+/=]{16,})*)", re.DOTALL)  # RSA 4096 is ~3,300


def _typed_secrets(text: str) -> Iterator[Finding]:
    for secret_type, pattern, in_group, check, needle in _secret_patterns():
        if needle not in text:
            continue
        for m in pattern.finditer(text):
            groups = range(1, pattern.groups + 1) if in_group else ()
            start, end = next((m.span(g) for g in groups if m.group(g)), m.span())
            value = text[start:end].rstrip()
            if value.strip() and check(value.strip()) and _AWS_EXAMPLE not in value:
                yield Finding("secret", start, start + len(value), secret_type)


_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{20,}")
_HEX_TOKEN = re.compile(r"[0-9a-fA-F](?<![A-Za-z0-9+/_=-][0-9a-fA-F])[0-9a-fA-F]{31,}(?![A-Za-z0-9+/_=-])")
_WORD_BEFORE = re.compile(r"\S*$")
# Random base64 changes character class (upper, lower, digit, other) at ~64% of its characters; an identifier
# made of words (CODE_PEP593_VALIDATOR_SUFFIX_format, getElementById2Later) at a quarter or less.
_MIN_SWITCHES = 0.4
_CLASS = str.maketrans({**dict.fromkeys(string.ascii_uppercase, "A"), **dict.fromkeys(string.ascii_lowercase, "a"),
                        **dict.fromkeys(string.digits, "0"), **dict.fromkeys("+/_=-", "-")})


def _random_base64(token: str) -> bool:
    classes = token.translate(_CLASS)
    if not ("A" in classes and "a" in classes and "0" in classes):
        return False
    return sum(a != b for a, b in zip(classes, classes[1:])) / (len(classes) - 1) >= _MIN_SWITCHES


def _random_hex(token: str) -> bool:
    """A digest or a hex key has digits and letters; a long run of digits is a number."""
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def _in_url_path(text: str, at: int) -> bool:
    """An id in a link's path (a playlist, a video, a document) names a page; a token in its query may be a key."""
    head = _WORD_BEFORE.search(text, max(0, at - 300), at).group()
    return "://" in head and "?" not in head


@cache
def _entropy_plugins():
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString

    return Base64HighEntropyString(), HexHighEntropyString()  # at their default limits, 4.5 and 3.0 bits


def _high_entropy(text: str) -> Iterator[Finding]:
    base64, hexadecimal = _entropy_plugins()
    for plugin, token_pattern, plausible in ((base64, _BASE64_TOKEN, _random_base64),
                                             (hexadecimal, _HEX_TOKEN, _random_hex)):
        for m in token_pattern.finditer(text):
            token = m.group()
            if (plausible(token) and plugin.calculate_shannon_entropy(token) > plugin.entropy_limit
                    and _AWS_EXAMPLE not in token and not _in_url_path(text, m.start())):
                yield Finding("secret", m.start(), m.end(), plugin.secret_type)
