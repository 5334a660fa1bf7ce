"""Where a webhook may go (services/notify/safety.py) and who gets which event (targets.py)."""

from __future__ import annotations

import ipaddress

import pytest

from services.notify import safety, targets
from shared import messages as m
from shared.config import Settings
from shared.jobs import new_job
from shared.messages import url_shown as shown

NONE: tuple[safety.Network, ...] = ()


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local (cloud metadata)"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("100.64.0.1", "private"), ("::ffff:10.0.0.1", "private"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("93.184.215.14", None), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", None),
    # IPv4 inside IPv6 is judged by the IPv4 it reaches: NAT64 (DNS64's answers), 6to4
    ("64:ff9b::a00:1", "private"), ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),
    ("64:ff9b::5db8:d70e", None), ("64:ff9b:1::a00:1", "private"), ("2002:7f00:1::1", "loopback"),
])
def test_addresses_inside_a_deployment_are_refused(address: str, kind: str | None) -> None:
    assert safety.why_refused(ipaddress.ip_address(address), NONE) == kind


def test_configured_networks_are_allowed() -> None:
    allowed = safety.networks(["127.0.0.1/32", "10.1.0.0/16"])
    assert safety.why_refused(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert safety.why_refused(ipaddress.ip_address("10.1.2.3"), allowed) is None
    assert safety.why_refused(ipaddress.ip_address("10.2.0.1"), allowed) == "private"
    assert safety.why_refused(ipaddress.ip_address("127.0.0.2"), allowed) == "loopback"
    with pytest.raises(ValueError, match="JETMEDIA_WEBHOOK_ALLOW_NETWORKS"):
        safety.networks(["10.0.0.0/33"])


@pytest.mark.parametrize("url, why", [
    ("ftp://example.com/", "not http or https"), ("file:///etc/passwd", "not http or https"),
    ("http://user:pw@example.com/", "user:password@"), ("http:///nohost", "no host"),
    ("http://169.254.169.254/latest/meta-data/", "link-local (cloud metadata)"),
    ("http://[::1]:8080/", "::1 is a loopback address"), ("http://0.0.0.0/", "unspecified"),
    ("http://localhost/", "localhost resolves to"),
    ("http://2130706433/", "resolves to 127.0.0.1"), ("http://0x7f.1/", "resolves to 127.0.0.1"),
    ("http://[::ffff:127.0.0.1]/", "is a loopback address"),
    # yarl (what aiohttp connects to) reads this as the literal 127.0.0.1; urllib saw a name
    ("http://127.0.0.\U0001ccf1:8080/", "127.0.0.1 is a loopback address"),
    ("http://" + "a" * 64 + ".example/", "not a valid host name"),  # was a UnicodeError out of send.post
])
async def test_unsafe_urls_are_refused_before_any_connection(url: str, why: str) -> None:
    with pytest.raises(safety.Unsafe, match=why.replace("(", r"\(").replace(")", r"\)")):
        await safety.check(url, NONE)


async def test_a_name_is_resolved_once_into_the_addresses_to_connect_to() -> None:
    checked = await safety.check("http://localhost:8080/x", safety.networks(["127.0.0.0/8", "::1/128"]))
    assert (checked.scheme, checked.host, checked.port) == ("http", "localhost", 8080)
    assert checked.addresses and all(address.is_loopback for address in checked.addresses)


def test_subscriptions_match_by_event_and_key_prefix() -> None:
    subs = targets.subscriptions(Settings(webhooks='[{"name": "shop", "url": "https://shop.example/h", '
                                                    '"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", '
                                                    '"events": ["asset.ready", "jetmedia.job.failed.v1"], '
                                                    '"prefix": "uploads/shop/"}, '
                                                    '{"url": "https://all.example/h", '
                                                    '"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]'))
    everything = next(name for name in subs if name != "shop")
    shop_job = new_job("j1", "asset", source_key="uploads/shop/a.jpg", callback_url="https://cb.example/")
    other_job = new_job("j2", "asset", source_key="uploads/else/a.jpg")
    ready = m.AssetReady(id="j1:ready", subject="j1", data=m.AssetReadyData(job="j1", asset="j1", key="k",
                                                                           media="image", outputs=[]))
    failed = m.JobFailed(id="j2:failed", subject="j2", data=m.JobFailedData(job="j2", stage="upload", error="x"))
    cancelled = m.JobCancelled(id="j1:cancelled", subject="j1", data=m.JobEndedData(job="j1", stage="variant"))

    def names(event: m.Event, subject: str, job: object) -> list[str]:
        return [t.name for t in targets.targets(event, subject, job, subs)]  # type: ignore[arg-type]

    assert names(ready, m.EVENTS_ASSET_READY, shop_job) == ["callback", "shop", everything]
    assert names(failed, m.EVENTS_JOB_FAILED, other_job) == [everything]  # outside the prefix
    assert names(cancelled, m.EVENTS_JOB_CANCELLED, shop_job) == ["callback", everything]  # not an event it wants


@pytest.mark.parametrize("webhooks, why", [
    ('[{"url": "ftp://x/", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]', "not an http"),
    ('[{"url": "https://x/", "secret": "plain"}]', "whsec_"),
    ('[{"url": "https://x/", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "name": "callback"}]', "reserved"),
    ('[{"url": "https://x/"}]', "secret"),
    ("/nonexistent/webhooks.json", "nor a readable file"),
])
def test_unusable_subscriptions_stop_the_start(webhooks: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        targets.check(Settings(webhooks=webhooks))


def test_a_password_in_a_webhook_url_is_never_shown() -> None:
    """Records, logs and dead letters show URLs through shown(); a subscription with
    user:password@ is refused at start-up without quoting the password (it would be refused at
    every attempt anyway)."""
    assert shown("https://shop:hunter2@shop.example:8443/hooks?token=t0k#f") == "https://shop.example:8443/hooks"
    webhooks = '[{"url": "https://shop:hunter2@shop.example/h", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]'
    with pytest.raises(ValueError, match="user:password@ in a webhook URL is not supported") as found:
        targets.check(Settings(webhooks=webhooks))
    assert "hunter2" not in str(found.value) and "https://shop.example/h" in str(found.value)


def test_a_refused_callback_url_is_quoted_without_its_credentials() -> None:
    """The reason goes into the job record and the log: a token in the query, a password in the
    authority are the receiver's secrets."""
    from shared.messages import callback_problem

    reason = callback_problem("https://user:s3cret@example.com:0/hook?token=t0ken#x")
    assert reason == "callback_url 'https://example.com:0/hook' names port 0"
    reason = callback_problem("https://example.com:99999/hook?token=t0ken")
    assert reason is not None and "t0ken" not in reason and "https://example.com:99999/hook" in reason
