import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignflow.quality.pii import KINDS, PLACEHOLDERS, Finding, find_pii, redact

GITHUB = "ghp_" + "x7Kp2Qm9Lr4Tz8Wv1Nc6Hb3Jd5Fg0Sa" + "Yu2Eq"  # 36 characters after the prefix
SLACK = "xoxb-" + "263594206564-2343594206574-" + "FGqddMF8t08v8N7Oq4i57vs1"
OPENAI = "sk-proj-" + "Nq3vK8xT2mR7pL9wZ4sH6jB1cF5dG0aYeU"
OPENAI_LEGACY = "sk-" + "Ab3dEf6hIj9kLm2nOp5q" + "T3BlbkFJ" + "Rs8tUv1wXy4zAb3dEf6h"
AWS = "AKIA" + "Z7Q3XK4M2PLR9T6B"
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
TOKEN = "iK2ZWeqhFWCEPyYngFb51yBMWXaSCrUZoL8g5ubb"  # 40 random base64 characters, 5.0 bits
PEM = ("-----BEGIN RSA PRIVATE KEY-----\n"
       "MIIEowIBAAKCAQEAx4UbaDzY5nC2Hq3vJ8mNwPaLkRtS1oXe6fGhIjKl\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAA\n"
       "-----END RSA PRIVATE KEY-----")


def only(text: str) -> Finding:
    findings = find_pii(text)
    assert len(findings) == 1, [(f, text[f.start:f.end]) for f in findings]
    return findings[0]


@pytest.mark.parametrize("text, value, kind, detail", [
    ("Best regards,\nJane Doe\nSenior Engineer, Acme Corp\njane.doe@acmecorp.io", "jane.doe@acmecorp.io",
     "email", "e-mail address"),
    ("Reach our New York desk at +1 212-555-0187 any weekday.", "+1 212-555-0187", "phone", "US"),
    ("Reach our New York desk at (212) 555-0187 any weekday.", "(212) 555-0187", "phone", "US"),
    ("The London office is on +44 20 7946 0958 until six.", "+44 20 7946 0958", "phone", "GB"),
    ("From inside the UK, dial 020 7946 0958 for the London office.", "020 7946 0958", "phone", "GB"),
    ("Our Berlin office: +49 30 901820.", "+49 30 901820", "phone", "DE"),
    ("Support is on (212) 555-0187 24 hours a day.", "(212) 555-0187", "phone", "US"),
    ("Please charge my Visa, 4111 1111 1111 1111, for the order.", "4111 1111 1111 1111", "credit_card", "Visa"),
    ("My Mastercard is 5555-5555-5555-4444, expiry 09/27.", "5555-5555-5555-4444", "credit_card", "Mastercard"),
    ("The Amex card 3782 822463 10005 was declined.", "3782 822463 10005", "credit_card", "American Express"),
    ("Send the deposit to DE89 3704 0044 0532 0130 00 by Friday.", "DE89 3704 0044 0532 0130 00", "iban", "DE IBAN"),
    ("Her account is GB82WEST12345698765432.", "GB82WEST12345698765432", "iban", "GB IBAN"),
    ("The login came from 81.2.69.160 at midnight.", "81.2.69.160", "ip_address", "IPv4"),
    ("The login came from 2a00:1450:4001:82a::200e at midnight.", "2a00:1450:4001:82a::200e", "ip_address", "IPv6"),
    (f"export AWS_ACCESS_KEY_ID={AWS}", AWS, "secret", "AWS Access Key"),
    (f"git clone https://{GITHUB}@github.com/acme/app.git", GITHUB, "secret", "GitHub Token"),
    (f'client = WebClient(token="{SLACK}")', SLACK, "secret", "Slack Token"),
    (f"Set OPENAI_API_KEY={OPENAI} before running.", OPENAI, "secret", "OpenAI-style API Key"),
    (f"openai.api_key = '{OPENAI_LEGACY}'", OPENAI_LEGACY, "secret", "OpenAI Token"),
    (f"stripe.api_key = '{STRIPE}'", STRIPE, "secret", "Stripe Access Key"),
    (f"Save this as id_rsa:\n\n{PEM}\n\nthen run chmod 600 id_rsa.", PEM, "secret", "Private Key"),
    (f"The webhook signing secret is {TOKEN}, keep it safe.", TOKEN, "secret", "Base64 High Entropy String"),
])
def test_each_kind_is_found_with_its_span(text, value, kind, detail):
    finding = only(text)
    assert (finding.kind, text[finding.start:finding.end], finding.detail) == (kind, value, detail)
    assert finding.kind in KINDS


def test_redact_puts_a_typed_placeholder_on_each_span():
    text = (f"Contact jane.doe@acmecorp.io or +44 20 7946 0958; card 4111 1111 1111 1111, "
            f"IBAN DE89 3704 0044 0532 0130 00, from 81.2.69.160, key {AWS}.")
    assert redact(text, find_pii(text)) == ("Contact [EMAIL] or [PHONE]; card [CREDIT_CARD], IBAN [IBAN], "
                                            "from [IP_ADDRESS], key [SECRET].")
    assert redact(text, []) == text
    assert set(PLACEHOLDERS.values()) == {"[EMAIL]", "[PHONE]", "[CREDIT_CARD]", "[IBAN]", "[IP_ADDRESS]", "[SECRET]"}


def test_findings_are_sorted_and_do_not_overlap():
    text = f"{TOKEN} jane.doe@acmecorp.io token={GITHUB} +1 212-555-0187 4111111111111111 {PEM}"
    findings = find_pii(text)
    assert [f.kind for f in findings] == ["secret", "email", "secret", "phone", "credit_card", "secret"]
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:]))


@pytest.mark.parametrize("text, value, detail", [
    # "token=ghp_..." is one base64-like token too; the typed finding wins, on the token alone
    (f"token={GITHUB}", GITHUB, "GitHub Token"),
    # a Telegram bot token starts with digits a phone reader might take
    ("bot = Bot('4839574812:AAFD39kkdpWt3ywyRZergyOLMaJhac60qc8')",
     "4839574812:AAFD39kkdpWt3ywyRZergyOLMaJhac60qc8", "Telegram Bot Token"),
    # a database URL's password, not the "e-mail" user:password@host
    ("DATABASE_URL=postgres://admin:S3cr3tP4ss@db.acmecorp.io/app", "S3cr3tP4ss", "Basic Auth Credentials"),
])
def test_the_most_specific_finding_wins(text, value, detail):
    finding = only(text)
    assert (text[finding.start:finding.end], finding.detail) == (value, detail)


@pytest.mark.parametrize("text", [
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18",
    "The meeting is on 2024-05-01 at 14:30:00, or 05/01/2024 at 2:30 pm, and again on 1 May 2025.",
    "The race started at 10:30:15 and ended at 11:45:20; the break was 10:30-11:45.",
    "The laptop costs $1,299.99; a 15% discount saves $194.99, so you pay 1 104,99 EUR in France.",
    "Accuracy rose from 87.5% to 92.25% (+4.75 points) between 1990 and 2024.",
    "Population grew from 8,336,817 in 2020 to 8,804,190 in 2023, from 1990-2000 and 2001-2010.",
    "Step 1: 123-456 = -333. Step 2: 1000 - 333 = 667. Step 3: 1234 * 5678 = 7006652.",
    "The answer is 12345678 + 87654321 = 99999999, and 2^31 - 1 = 2147483647.",
    "Your order number is 4155552671 and your invoice is INV-2024-0001-7788.",
    "ISBN 978-0-306-40615-7 and ISBN-13: 978-3-16-148410-0 are both in the catalogue.",
    "Upgrade to version 1.2.3.4 or v10.0.0.1; Python 3.11.7 and Node 20.11.1 also work.",
    "pip install somepkg==1.2.3.4 requests>=2.31.0 and see section 4.1.2.3 of the manual.",
    "Ship to Boston, MA 02110-1301 or New York, NY 10001.",
    "Pi is 3.14159265358979323846264338327950288419716939937510 to fifty places.",
    "The sun is 149 597 870 700 metres away; light takes 499.0 seconds.",
    "array([ 64.25172825,  41.29465463,  35.46943289, 104.71586081,  0.36908985])",
    "Unix time 1700000000 is in November 2023 and 1712345678 in April 2024.",
    "See arXiv:0803.3079, DOI 10.1000/182 and ISSN 0962-4929.",
    "MAX_RETRIES = 5\nSHA256_DIGEST_SIZE = 32\nCODE_PEP593_VALIDATOR_SUFFIX_format = '{}'\n"
    "def area(r):\n    return 3.14159265358979 * r ** 2\n\nprint(area(12345678), hex(0xDEADBEEF))",
    '{"id": 1024, "price": 19.99, "qty": 3, "created": "2024-05-01T10:30:00Z", "sku": "AB-1234-XY"}',
    "date,open,close,volume\n2024-05-01,182.35,184.10,51234567\n2024-05-02,184.10,183.05,48765432",
    "Fixed in commit 3f2a9c1; the follow-up a1b2c3d4e5f reverted it.",
    "Request id 123e4567-e89b-12d3-a456-426614174000 was logged twice.",
    "Never share your password or API token; set password='' and api_key=None in the example.",
    "btoa('hello world') returns aGVsbG8gd29ybGQ= and the colours are #ff5733 and #1a2b3c.",
    "Call getElementById2ForTheWholeDocument() on an AbstractSingletonProxyFactoryBean.",
    "Listen at https://open.spotify.com/playlist/37i9dQZF1DX9XIFQuFvzM4 or read https://arxiv.org/abs/2305.18290.",
    "Use scikit-learn (sklearn), std::vector<int> and a::b::c; the MAC is 00:1A:2B:3C:4D:5E.",
    "7.  123456789\n8.  1234567\n9.  654321 are the most common passwords.",
    "The card 4111 1111 1111 1112 fails Luhn; 1234 5678 9012 3456 has no issuer.",
    "Readings: 4202 2185 8533 5686 4417 2684 2448 9559 2714 7296 1046 4247 (a table, not cards).",
    "DE89 3704 0044 0532 0130 01 has wrong check digits.",
    "Coordinates 40.7128, -74.0060; the temperature was -3.5 degrees.",
])
def test_ordinary_text_has_no_finding(text):
    assert find_pii(text) == [], [(f, text[f.start:f.end]) for f in find_pii(text)]


@pytest.mark.parametrize("text", [
    # RFC 2606 reserved domains, an SSH remote and an image name are placeholders, not anyone's address
    "Write to alice@example.com, bob@mail.example.org, carol@site.example or dave@host.test.",
    "git clone git@github.com:acme/app.git and use logo@2x.png on retina screens.",
    # loopback, private, shared, documentation and multicast addresses, and public DNS resolvers, identify no one
    "Bind to 127.0.0.1 or 0.0.0.0, the router is 192.168.1.1, the pod 10.0.12.7, CGNAT 100.64.0.1.",
    "Docs use 192.0.2.10, 198.51.100.7, 203.0.113.5 and 2001:db8::1; multicast is 224.0.0.251 and ff02::1.",
    "Set DNS to 8.8.8.8 or 1.1.1.1, or 2606:4700:4700::1111 on IPv6; loopback is ::1.",
    # AWS's documentation keys and tutorial credentials are examples
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "DATABASE_URL=postgres://user:password@localhost:5432/app and {schema}://{user}:{password}@{host}",
    "Set OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxx or sk-your-api-key-goes-here.",
    "A key file starts with -----BEGIN RSA PRIVATE KEY----- and ends with -----END RSA PRIVATE KEY-----.",
])
def test_placeholders_and_addresses_of_no_one_are_not_flagged(text):
    assert find_pii(text) == [], [(f, text[f.start:f.end]) for f in find_pii(text)]


def test_a_full_hex_digest_counts_as_a_secret_and_a_short_sha_does_not():
    """A 40-hex git sha cannot be told from a 40-hex API token, so it is flagged; 7-12 hex characters are not."""
    sha = "9fceb02d0ae598e95dc970b74767f19372d61af8"
    finding = only(f"Check out {sha} to reproduce, or 9fceb02 for short.")
    assert (finding.kind, finding.detail, finding.end - finding.start) == ("secret", "Hex High Entropy String", 40)
    assert find_pii("Check out 9fceb02 to reproduce.") == []


def test_finding_never_carries_the_value():
    text = f"key {AWS} and card 4111 1111 1111 1111 and jane.doe@acmecorp.io"
    for finding in find_pii(text):
        assert text[finding.start:finding.end] not in repr(finding)


def test_scanning_touches_neither_network_nor_files():
    text = (f"jane.doe@acmecorp.io +44 20 7946 0958 (212) 555-0187 4111 1111 1111 1111 DE89 3704 0044 0532 0130 00 "
            f"81.2.69.160 {AWS} {GITHUB} {SLACK} {OPENAI} {STRIPE} {TOKEN}\n{PEM}")
    find_pii(text)  # the libraries load their modules and data once, on first use
    events = []
    watching = [True]

    def hook(event, args):
        if watching and (event.startswith("socket.") or event in ("open", "import", "os.listdir", "os.scandir")):
            events.append(event)

    sys.addaudithook(hook)
    try:
        assert len(find_pii(text)) == 13
    finally:
        watching.clear()
    assert events == []


def test_importing_the_module_loads_none_of_the_libraries():
    code = ("import sys, alignflow.quality.pii; "
            "print(sorted(m for m in ('detect_secrets', 'phonenumbers', 'stdnum', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


PIECES = st.sampled_from([*"0123456789 -.()+:@/_=abcxyzABCXYZ\n", "\u0663", "\uff11", "sk-", "ghp_", "AKIA", "xoxb-",
                          "-----BEGIN RSA PRIVATE KEY-----", "DE89", "4111", ".com", "::"])


@given(st.lists(PIECES, max_size=60).map("".join))
def test_any_text_gives_sorted_disjoint_spans_inside_it(text):
    findings = find_pii(text)
    assert all(0 <= f.start < f.end <= len(text) and f.kind in KINDS for f in findings)
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:]))
    assert redact(text, findings).count("[") >= len(findings)
