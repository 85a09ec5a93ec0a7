import json
import traceback
from typing import Any

import pytest

from protocol.errors import ErrorCode, ProtocolError
from protocol.qr import MAX_PAYLOAD_BYTES, QrPayload, decode_qr_payload, encode_qr_payload

TOKEN = "Zq3k_Xw-8mPb1LrT0aYcVg"  # 22 characters: 128 bits, URL-safe base64
WIFI_PASSWORD = "Sup3r-Secret-WiFi-Pw"


def fields(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "u": "https://cloud.example.com",
        "t": TOKEN,
        "s": "Home network",
        "p": WIFI_PASSWORD,
        "m": "EZ-C31",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def text(**changes: Any) -> str:
    return json.dumps(fields(**changes), separators=(",", ":"), ensure_ascii=False)


def refused(payload: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_qr_payload(payload)
    assert caught.value.code == ErrorCode.INVALID_QR_PAYLOAD
    return caught.value


def test_a_payload_survives_encoding_and_decoding() -> None:
    payload = QrPayload(
        u="https://cloud.example.com", t=TOKEN, s="Café ☕ 5G", p=WIFI_PASSWORD, m="EZ-C31"
    )
    encoded = encode_qr_payload(payload)
    assert decode_qr_payload(encoded) == payload
    assert json.loads(encoded) == {
        "v": 1,
        "u": "https://cloud.example.com",
        "t": TOKEN,
        "s": "Café ☕ 5G",
        "p": WIFI_PASSWORD,
        "m": "EZ-C31",
    }


def test_the_encoded_payload_is_compact_json_in_the_documented_key_order() -> None:
    encoded = encode_qr_payload(QrPayload(u="http://127.0.0.1:8000", t=TOKEN, s="Home", m="X1"))
    assert encoded == (
        '{"v":1,"u":"http://127.0.0.1:8000","t":"' + TOKEN + '","s":"Home","p":"","m":"X1"}'
    )


@pytest.mark.parametrize("version", [0, 2, "1", None, True, 1.0, [1]])
def test_versions_other_than_1_are_refused(version: Any) -> None:
    data = fields()
    data["v"] = version
    error = refused(json.dumps(data))
    assert "version" in error.message


def test_a_payload_without_a_version_is_refused() -> None:
    data = fields()
    del data["v"]
    refused(json.dumps(data))


def test_unknown_fields_are_refused() -> None:
    error = refused(text(x="surprise"))
    assert "x" in error.message


@pytest.mark.parametrize("missing", ["u", "t", "s", "m"])
def test_required_fields_are_required(missing: str) -> None:
    data = fields()
    del data[missing]
    refused(json.dumps(data))


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", '"a string"', "null", "{"])
def test_text_that_is_not_a_json_object_is_refused(raw: str) -> None:
    refused(raw)


@pytest.mark.parametrize("ssid", ["a" * 33, "é" * 17, "", "Home\nnet", "Home\x7f"])
def test_bad_ssids_are_refused(ssid: str) -> None:
    error = refused(text(s=ssid))
    assert "s" in error.message


@pytest.mark.parametrize("ssid", ["a" * 32, "é" * 16, "x"])
def test_ssids_of_up_to_32_bytes_are_accepted(ssid: str) -> None:
    assert decode_qr_payload(text(s=ssid)).s == ssid


@pytest.mark.parametrize(
    "password",
    [
        "Seven-7",  # 7 characters
        "z" * 64,  # 64 characters that are not hex
        "g" + "0" * 63,
        "a" * 65,
        "pass\x01word",  # a control character
        "pässwörd-long",  # not ASCII
        "password\t1",
    ],
)
def test_bad_wifi_passwords_are_refused(password: str) -> None:
    error = refused(text(p=password))
    assert "p" in error.message


@pytest.mark.parametrize(
    "password", ["", "Eight-8!", "x" * 63, "0123456789abcdefABCDEF" * 2 + "0123456789abcdef01ab"]
)
def test_open_networks_passphrases_and_hex_keys_are_accepted(password: str) -> None:
    assert decode_qr_payload(text(p=password)).p == password


def test_a_64_digit_hex_key_is_accepted() -> None:
    psk = "0123456789abcdef" * 4
    assert len(psk) == 64
    assert decode_qr_payload(text(p=psk)).p == psk


def test_an_open_network_may_leave_the_password_out() -> None:
    data = fields()
    del data["p"]
    assert decode_qr_payload(json.dumps(data)).p == ""


@pytest.mark.parametrize(
    "changes",
    [
        {"t": "short"},
        {"t": TOKEN + "="},
        {"t": "Zq3k/Xw+8mPb1LrT0aYcVg"},
        {"u": "ftp://cloud.example.com"},
        {"u": "https://cloud example.com"},
        {"m": ""},
        {"m": "-starts-with-dash"},
        {"m": "M" * 49},
        {"s": 123},
    ],
)
def test_other_out_of_range_fields_are_refused(changes: dict[str, Any]) -> None:
    refused(text(**changes))


def test_a_payload_longer_than_the_limit_is_refused_when_decoding() -> None:
    padded = text()[:-1] + " " * MAX_PAYLOAD_BYTES + "}"
    json.loads(padded)  # still valid JSON: refused for its size alone
    error = refused(padded)
    assert "too long" in error.message


def test_a_payload_that_would_not_fit_in_the_code_is_refused_when_encoding() -> None:
    # Backslashes are escaped in JSON, so these fields double in size once encoded.
    payload = QrPayload(u="http://" + "\\" * 193, t=TOKEN, s="Home", p="\\" * 63, m="EZ-C31")
    with pytest.raises(ProtocolError) as caught:
        encode_qr_payload(payload)
    assert caught.value.code == ErrorCode.INVALID_QR_PAYLOAD


def test_the_repr_shows_neither_the_wifi_password_nor_the_token() -> None:
    payload = decode_qr_payload(text())
    for shown in (repr(payload), str(payload), f"{payload}", repr([payload]), repr({"q": payload})):
        assert WIFI_PASSWORD not in shown
        assert TOKEN not in shown
        assert "Home network" in shown or "QrPayload" in shown


@pytest.mark.parametrize(
    "changes",
    [
        {"p": "Sup3r-S"},  # the password itself is invalid (7 characters)
        {"p": "Sup3r-Secret-WiFi-Pw\x01"},
        {"p": WIFI_PASSWORD, "t": "bad"},  # a valid password beside an invalid field
        {"p": WIFI_PASSWORD, "extra": WIFI_PASSWORD},
        {"p": WIFI_PASSWORD, "v": 2},
    ],
)
def test_validation_errors_never_contain_the_password(changes: dict[str, Any]) -> None:
    error = refused(text(**changes))
    secret = changes["p"]
    rendered = "".join(traceback.format_exception(error))
    for shown in (str(error), repr(error), error.message, rendered):
        assert secret not in shown
        assert "Sup3r-S" not in shown
    assert error.__cause__ is None
