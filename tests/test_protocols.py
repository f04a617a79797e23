"""The 2captcha and createTask routes in process: sealed ids, the choice of site, hints, keys,
and each capserve error as the protocol's own error (tests/test_clients.py runs the real client
packages against a real server over TLS)."""

from __future__ import annotations

import asyncio
import base64
import logging
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from capserve.core.errors import UnknownSite
from capserve.core.images import ImageLimits
from capserve.model_registry.registry import Registry
from capserve.server.access import Access, ApiKey, digest, load_keys
from capserve.server.app import create_app
from capserve.server.errors import BadRequest
from capserve.server.parsing import parse_urlencoded
from capserve.server.settings import Settings
from capserve.server.solving import RESULT_TTL, Hints, Unsolvable, WrongId, issue_id, resolve_id, solve
from tests.conftest import DEMO_EXAMPLE, png_bytes

IMAGE = DEMO_EXAMPLE.read_bytes()
B64 = base64.b64encode(IMAGE).decode()
KEYS = [
    ApiKey("plain", digest("k-plain")),
    ApiKey("var", digest("k-var"), default_site="demo-var"),
    ApiKey("only-var", digest("k-only-var"), sites=frozenset({"demo-var"})),
    ApiKey("slow", digest("k-slow"), rate=0.001),
]


@pytest.fixture(scope="module")
def registry():
    registry = Registry()  # the bundled entries: demo reads the example as 7kp3
    registry.refresh()
    return registry


@pytest.fixture(scope="module")
def demo_var_text(registry) -> str:
    return registry.get("demo-var").recognize(IMAGE).text


def client(registry, **settings) -> TestClient:
    settings = {"default_site": "demo", "protocol_secret": "test-secret", **settings}
    return TestClient(create_app(registry, Settings(**settings), access=Access(KEYS), watch=False))


def submit(c: TestClient, **fields) -> str:
    r = c.post("/in.php", data={"key": "k-plain", "method": "base64", "body": B64, **fields})
    assert r.status_code == 200
    return r.text


def create(c: TestClient, key: str = "k-plain", **task) -> dict:
    r = c.post("/createTask", json={"clientKey": key, "task": {"type": "ImageToTextTask", "body": B64, **task}})
    assert r.status_code == 200
    return r.json()


# -- ids ----------------------------------------------------------------------------------------

def test_an_id_holds_its_answer_for_its_key_until_it_expires():
    key, other = KEYS[0], KEYS[1]
    captcha_id = issue_id(b"s", key, "7kp3", now=1000.0)
    assert captcha_id.isdigit() and "7kp3" not in captcha_id
    assert resolve_id(b"s", key, captcha_id, now=1000.0 + RESULT_TTL - 1) == "7kp3"
    for secret, owner, now in ((b"s", other, 1000.0), (b"s", None, 1000.0), (b"t", key, 1000.0),
                               (b"s", key, 1000.0 + RESULT_TTL + 1)):
        with pytest.raises(WrongId):
            resolve_id(secret, owner, captcha_id, now=now)
    tampered = captcha_id[:-3] + str((int(captcha_id[-3]) + 1) % 10) + captcha_id[-2:]
    for bad in (tampered, "12", "abc", "9" * 1000, ""):
        with pytest.raises(WrongId):
            resolve_id(b"s", key, bad, now=1000.0)


def test_ids_resolve_on_another_worker_with_the_same_secret_only(registry):
    """Two apps stand for two workers (or machines): the same secret resolves, a different one does not."""
    with client(registry) as one, client(registry) as two, client(registry, protocol_secret="other") as three:
        captcha_id = submit(one)[3:]
        assert two.get("/res.php", params={"key": "k-plain", "action": "get", "id": captcha_id}).text == "OK|7kp3"
        assert three.get("/res.php", params={"key": "k-plain", "action": "get", "id": captcha_id}).text == \
            "ERROR_WRONG_CAPTCHA_ID"


def test_without_a_secret_each_app_has_its_own(registry):
    with client(registry, protocol_secret=None) as one, client(registry, protocol_secret=None) as two:
        captcha_id = submit(one)[3:]
        assert one.get("/res.php", params={"key": "k-plain", "action": "get", "id": captcha_id}).text == "OK|7kp3"
        assert two.get("/res.php", params={"key": "k-plain", "action": "get", "id": captcha_id}).text == \
            "ERROR_WRONG_CAPTCHA_ID"


# -- 2captcha -----------------------------------------------------------------------------------

def test_2captcha_submit_poll_balance_and_reports(registry):
    with client(registry) as c:
        plain = submit(c)
        assert plain.startswith("OK|")
        captcha_id = plain[3:]
        as_json = c.post("/in.php", data={"key": "k-plain", "method": "post", "json": "1"},
                         files={"file": ("c.png", IMAGE, "image/png")}).json()
        assert as_json["status"] == 1 and as_json["request"].isdigit()
        poll = {"key": "k-plain", "action": "get"}
        assert c.get("/res.php", params={**poll, "id": captcha_id}).text == "OK|7kp3"
        assert c.post("/res.php", data={**poll, "id": as_json["request"], "json": "1"}).json() == \
            {"status": 1, "request": "7kp3"}
        assert c.get("/res.php", params={**poll, "ids": f"{captcha_id},123"}).text == "7kp3|ERROR_WRONG_CAPTCHA_ID"
        assert c.get("/res.php", params={"key": "k-plain", "action": "getbalance"}).text == "1000000"
        for action in ("reportbad", "reportgood"):
            assert c.get("/res.php", params={"key": "k-plain", "action": action, "id": captcha_id}).text == \
                "OK_REPORT_RECORDED"
            assert c.get("/res.php", params={"key": "k-plain", "action": action, "id": "42"}).text == \
                "ERROR_WRONG_CAPTCHA_ID"
        assert c.get("/res.php", params={"key": "k-plain", "action": "nope"}).text == "ERROR_EMPTY_ACTION"
        assert c.get("/res.php", params={**poll, "id": "x1"}).text == "ERROR_WRONG_ID_FORMAT"


@pytest.mark.parametrize("fields, error", [
    ({"key": ""}, "ERROR_WRONG_USER_KEY"),
    ({"key": "nope"}, "ERROR_KEY_DOES_NOT_EXIST"),
    ({"body": ""}, "ERROR_ZERO_CAPTCHA_FILESIZE"),
    ({"method": "post"}, "ERROR_ZERO_CAPTCHA_FILESIZE"),
    ({"body": "!!!not base64!!!"}, "ERROR_UPLOAD"),
    ({"body": base64.b64encode(b"not an image at all, longer than nothing").decode()}, "ERROR_IMAGE_TYPE_NOT_SUPPORTED"),
    ({"body": base64.b64encode(b"x" * 70_000).decode()}, "ERROR_TOO_BIG_CAPTCHA_FILESIZE"),
    ({"site": "no-such-site"}, "ERROR_BAD_PARAMETERS"),
    ({"method": "userrecaptcha"}, "ERROR_BAD_PARAMETERS"),
    ({"key": "k-only-var", "site": "demo"}, "ERROR_BAD_PARAMETERS"),
    ({"numeric": "lots"}, "ERROR_BAD_PARAMETERS"),
    ({"min_len": "26"}, "ERROR_CAPTCHA_UNSOLVABLE"),  # demo's model has 25 timesteps: 25 characters at most
])
def test_2captcha_errors_are_its_own_strings_with_status_200(registry, fields, error):
    with client(registry, max_body_bytes=64 * 1024) as c:
        assert submit(c, **fields) == error
        r = c.post("/in.php", params={"json": "1"}, data={"key": "k-plain", "method": "base64", "body": B64, **fields})
        assert r.status_code == 200 and r.json()["status"] == 0 and r.json()["request"] == error
        assert r.json()["error_text"]


def test_2captcha_hints_that_fit_pass(registry):
    with client(registry) as c:
        assert submit(c, numeric="4", min_len="4", max_len="4", regsense="1").startswith("OK|")
        assert submit(c, numeric="3").startswith("ERROR_CAPTCHA_UNSOLVABLE")


def test_hints_the_best_reading_misses_get_the_best_reading_that_meets_them(registry):
    """demo reads the example as 7kp3; a numeric, min_len or max_len hint it misses makes the
    decoder find the best reading under the hint, as ?charset= and ?length= would."""
    def solved(**fields) -> str:
        return c.get("/res.php", params={"key": "k-plain", "action": "get", "id": submit(c, **fields)[3:]}).text[3:]

    with client(registry) as c:
        digits = solved(numeric="1")
        assert digits and digits.isdigit() and set(digits) <= set("7kp3")
        same = c.get("/recognize/demo", params={"base64Image": B64, "charset": "23456789", "length": "1-25"},
                     headers={"X-API-Key": "k-plain"})
        assert same.json()["text"] == digits
        letters = solved(numeric="2", min_len="4", max_len="4")
        assert len(letters) == 4 and letters.isalpha()
        assert len(solved(min_len="5")) == 5 and len(solved(max_len="3")) == 3
        both = solved(numeric="4", max_len="3")  # 4: restricted by length only, then checked for both kinds
        assert len(both) == 3 and any(ch.isdigit() for ch in both) and any(ch.isalpha() for ch in both)
        task = create(c, numeric=1, maxLength=3)
        assert task["errorId"] == 0 and task["solution"]["text"].isdigit() and len(task["solution"]["text"]) <= 3


def test_an_image_format_the_server_does_not_accept():
    registry = Registry(limits=ImageLimits(formats=("JPEG",)))
    registry.refresh()
    with client(registry) as c:
        assert submit(c) == "ERROR_WRONG_FILE_EXTENSION"


def test_rate_limited_keys_get_no_slot(registry):
    with client(registry) as c:
        assert submit(c, key="k-slow").startswith("OK|")
        assert submit(c, key="k-slow") == "ERROR_NO_SLOT_AVAILABLE"
        assert create(c, key="k-slow")["errorCode"] == "ERROR_NO_SLOT_AVAILABLE"
        assert submit(c).startswith("OK|")  # other keys go on


def test_signed_servers_refuse_protocol_requests(registry):
    app = create_app(registry, Settings(default_site="demo"), access=Access(KEYS, hmac_secret=b"x"), watch=False)
    with TestClient(app) as c:
        assert submit(c) == "ERROR_KEY_DOES_NOT_EXIST"
        assert create(c)["errorCode"] == "ERROR_KEY_DOES_NOT_EXIST"


# -- the site that answers ----------------------------------------------------------------------

def test_the_site_is_the_field_else_the_keys_default_else_the_servers(registry, demo_var_text):
    assert demo_var_text != "7kp3"  # the two bundled models read the example differently
    with client(registry) as c:
        assert c.get("/res.php", params={"key": "k-plain", "action": "get", "id": submit(c)[3:]}).text == "OK|7kp3"
        assert create(c)["solution"]["text"] == "7kp3"                        # the server's default
        assert create(c, key="k-var")["solution"]["text"] == demo_var_text    # the key's default
        assert create(c, key="k-var", site="demo")["solution"]["text"] == "7kp3"  # the field
        var_id = submit(c, key="k-var")[3:]
        assert c.get("/res.php", params={"key": "k-var", "action": "get", "id": var_id}).text == "OK|" + demo_var_text
    with client(registry, default_site=None) as c:
        assert submit(c) == "ERROR_BAD_PARAMETERS"
        assert create(c)["errorCode"] == "ERROR_TASK_NOT_SUPPORTED"
        assert create(c, key="k-var")["solution"]["text"] == demo_var_text


def test_keys_file_default_site(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - key: a\n    default_site: demo\n  - key: b\n")
    assert [k.default_site for k in load_keys(Settings(api_keys_file=path))] == ["demo", None]
    path.write_text("keys:\n  - key: a\n    default_site: [demo]\n")
    with pytest.raises(ValueError, match="default_site"):
        load_keys(Settings(api_keys_file=path))


# -- createTask ---------------------------------------------------------------------------------

def test_create_task_answers_at_once_and_polls(registry):
    with client(registry) as c:
        created = create(c)
        assert created["errorId"] == 0 and created["status"] == "ready" and created["solution"] == {"text": "7kp3"}
        assert isinstance(created["taskId"], str) and created["taskId"].isdigit()
        polled = c.post("/getTaskResult", json={"clientKey": "k-plain", "taskId": created["taskId"]}).json()
        assert polled["status"] == "ready" and polled["solution"] == {"text": "7kp3"}
        assert c.post("/getBalance", json={"clientKey": "k-plain"}).json() == {"errorId": 0, "balance": 1000000}
        report = {"clientKey": "k-plain", "taskId": created["taskId"]}
        assert c.post("/reportIncorrectImageCaptcha", json=report).json() == {"errorId": 0, "status": "success"}
        assert c.post("/getTaskResult", json={"clientKey": "k-var", "taskId": created["taskId"]}).json()[
            "errorCode"] == "ERROR_NO_SUCH_CAPCHA_ID"


@pytest.mark.parametrize("doc, error", [
    ({"clientKey": "nope", "task": {"type": "ImageToTextTask", "body": B64}}, (1, "ERROR_KEY_DOES_NOT_EXIST")),
    ({"task": {"type": "ImageToTextTask", "body": B64}}, (1, "ERROR_KEY_DOES_NOT_EXIST")),
    ({"clientKey": "k-plain"}, (22, "ERROR_TASK_ABSENT")),
    ([1, 2], (22, "ERROR_TASK_ABSENT")),
    ({"clientKey": "k-plain", "task": {"type": "RecaptchaV2Task"}}, (23, "ERROR_TASK_NOT_SUPPORTED")),
    ({"clientKey": "k-plain", "task": {"type": "ImageToTextTask", "body": B64, "site": "zz"}},
     (23, "ERROR_TASK_NOT_SUPPORTED")),
    ({"clientKey": "k-plain", "task": {"type": "ImageToTextTask"}}, (3, "ERROR_ZERO_CAPTCHA_FILESIZE")),
    ({"clientKey": "k-plain", "task": {"type": "ImageToTextTask", "body": "AAAA"}},
     (15, "ERROR_IMAGE_TYPE_NOT_SUPPORTED")),
    ({"clientKey": "k-plain", "task": {"type": "ImageToTextTask", "body": B64, "minLength": 30}},
     (12, "ERROR_CAPTCHA_UNSOLVABLE")),
])
def test_create_task_errors(registry, doc, error):
    with client(registry) as c:
        r = c.post("/createTask", json=doc)
        assert r.status_code == 200
        assert (r.json()["errorId"], r.json()["errorCode"]) == error and r.json()["errorDescription"]


def test_create_task_bad_json_and_polls_of_junk(registry):
    with client(registry) as c:
        assert c.post("/createTask", content=b"{nope").json()["errorCode"] == "ERROR_TASK_ABSENT"
        for task_id in ("123", None, "abc", 7):
            answer = c.post("/getTaskResult", json={"clientKey": "k-plain", "taskId": task_id}).json()
            assert answer["errorId"] == 16
        assert c.post("/getBalance", json={"clientKey": "no"}).json()["errorId"] == 1


# -- hints and unexpected errors ----------------------------------------------------------------

class _Reads:
    """A registry whose one model reads every image as ``text`` (or raises ``text``)."""

    def __init__(self, text):
        self.text = text

    def get(self, site):
        if site != "sum":
            raise UnknownSite(site)
        return self

    def open(self, data):  # what offload.recognize asks of a model before reading
        return None

    def decode_cost(self, image):
        return 0

    def recognize(self, data, image=None, restrict=None):
        if isinstance(self.text, Exception):
            raise self.text
        return type("R", (), {"text": self.text})()


def test_calc_evaluates_what_the_model_read():
    assert asyncio.run(solve(_Reads("12+7=?"), "sum", b"", Hints(calc=True))) == "19"
    assert asyncio.run(solve(_Reads("19"), "sum", b"", Hints(calc=True))) == "19"  # the model's chain did it already
    assert asyncio.run(solve(_Reads("12+7"), "sum", b"", Hints())) == "12+7"
    with pytest.raises(Unsolvable):
        asyncio.run(solve(_Reads("abc"), "sum", b"", Hints(calc=True)))


def test_unexpected_errors_are_logged_not_shown(caplog):
    app = create_app(Registry([]), Settings(default_site="sum"), access=Access(), watch=False)
    app.state.registry = _Reads(RuntimeError("internal detail 5f3a"))
    with TestClient(app) as c, caplog.at_level(logging.ERROR):
        r = c.post("/in.php", data={"key": "any", "method": "base64", "body": base64.b64encode(png_bytes()).decode(),
                                    "json": "1"})
        created = c.post("/createTask", json={"clientKey": "any", "task": {"type": "ImageToTextTask", "body": B64}})
    assert r.status_code == 200 and r.json()["request"] == "ERROR_CAPTCHA_UNSOLVABLE"
    assert created.json()["errorCode"] == "ERROR_CAPTCHA_UNSOLVABLE"
    assert "5f3a" not in r.text + created.text
    assert "internal detail 5f3a" in caplog.text


@given(st.dictionaries(st.text(min_size=1), st.text(), max_size=8))
def test_urlencoded_forms_parse_as_the_standard_library_does(fields):
    body = urlencode(fields).encode()
    assert parse_urlencoded(body) == dict(parse_qsl(body.decode(), keep_blank_values=True))


def test_urlencoded_forms_have_a_field_limit():
    with pytest.raises(BadRequest):
        parse_urlencoded(b"&".join(b"a%d=1" % i for i in range(65)))


def test_reported_wrong_answers_are_kept_as_samples(registry, tmp_path):
    """With collection on, reportbad and reportIncorrectImageCaptcha keep the submitted image
    with the model's answer as a ``wrong`` sample of its site; a good report keeps nothing."""
    import json

    samples = tmp_path / "samples"
    with client(registry, samples_dir=samples) as c:
        first = submit(c)[3:]
        report = {"key": "k-plain", "id": first}
        assert c.get("/res.php", params={**report, "action": "reportgood"}).text == "OK_REPORT_RECORDED"
        assert not (samples / "demo").exists()
        assert c.get("/res.php", params={**report, "action": "reportbad"}).text == "OK_REPORT_RECORDED"
        task = c.post("/createTask", json={"clientKey": "k-var", "task": {"type": "ImageToTextTask", "body": B64}}).json()
        assert c.post("/reportIncorrectImageCaptcha", json={"clientKey": "k-var", "taskId": task["taskId"]}).json() == \
            {"errorId": 0, "status": "success"}
    kept = {site: sorted(p for p in (samples / site).iterdir() if p.suffix == ".png") for site in ("demo", "demo-var")}
    assert [len(kept["demo"]), len(kept["demo-var"])] == [1, 1]
    assert kept["demo"][0].read_bytes() == IMAGE
    meta = json.loads(kept["demo"][0].with_name(kept["demo"][0].name + ".json").read_text())
    assert meta["answer"] == "7kp3" and meta["reason"] == "wrong"
    assert json.loads(kept["demo-var"][0].with_name(kept["demo-var"][0].name + ".json").read_text())["answer"] == \
        task["solution"]["text"]
    assert not list((samples / ".held").glob("*.json"))  # both reported: nothing is held any longer
