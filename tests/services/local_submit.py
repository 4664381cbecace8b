"""Post mail into a test Postfix with its sendmail(1) command, as root or
as an ordinary Unix user -- the way a script on a shared host does.

Postfix lets an unprivileged user name another configuration directory
(``sendmail -C DIR``) only when the *default* one (``/etc/postfix/main.cf``)
lists it in ``alternate_config_directories``.  To touch nothing on the
machine, :func:`sendmail` runs an unprivileged command in a private mount
namespace (``unshare --mount``) where a copy of ``/etc/postfix`` with such a
``main.cf`` is bind-mounted over ``/etc/postfix``; the namespace ends with
the command.  Requires root (to create the namespace), ``unshare`` and
``runuser``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.services.postfix import PostfixInstance

#: The unprivileged Unix user tests submit as (exists on every Debian system).
USER = "nobody"

_AS_USER = 'mount --bind "$1" /etc/postfix && shift && exec runuser -u "$0" -- "$@"'


def _user_etc(postfix: PostfixInstance) -> Path:
    """A copy of /etc/postfix whose main.cf admits the instance's config dir."""
    etc = postfix.base_dir / "etc-default"
    if not etc.exists():
        shutil.copytree("/etc/postfix", etc, symlinks=True)
        (etc / "main.cf").write_text(f"alternate_config_directories = {postfix.config_dir}\n")
        etc.chmod(0o755)
    return etc


def sendmail(postfix: PostfixInstance, message: bytes, *args: str, user: str | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``sendmail -C <instance etc> ARGS`` with ``message`` on standard
    input, as root (``user=None``) or as the Unix ``user``; returns the
    completed process (exit status, stdout, stderr as text)."""
    cmd = ["sendmail", "-C", str(postfix.config_dir), *args]
    if user is not None:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _AS_USER,
               user, str(_user_etc(postfix)), *cmd]
    proc = subprocess.run(cmd, input=message, capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


# -- Sendmail: the mail submission program (MSP) ---------------------------------

def build_msp(instance) -> Path:
    """``submit.cf`` for a :class:`~tests.services.sendmail.SendmailInstance`:
    Sendmail's MSP, as ``sendmail(1)`` runs for ordinary users, queueing in
    ``<base>/clientmqueue`` (owned by ``nobody``, its RunAsUser) and relaying
    over SMTP to the instance's MTA listener (``relay_port``)."""
    from tests.services.sendmail import _run
    queue = instance.base_dir / "clientmqueue"
    queue.mkdir(exist_ok=True)
    shutil.chown(queue, USER, "nogroup")
    queue.chmod(0o770)
    mc = "\n".join([
        "divert(0)dnl",
        f"include(`{instance.dist.cf_dir}/m4/cf.m4')dnl",
        "OSTYPE(`linux')dnl",
        "define(`confCF_VERSION', `Submit')dnl",
        f"define(`confRUN_AS_USER', `{USER}')dnl",
        f"define(`MSP_QUEUE_DIR', `{queue}')dnl",
        f"define(`confDOMAIN_NAME', `{instance.hostname}')dnl",
        f"define(`confSERVICE_SWITCH_FILE', `{instance.config_dir}/service.switch')dnl",
        f"define(`confHOSTS_FILE', `{instance.config_dir}/hosts')dnl",
        "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl",
        f"define(`RELAY_MAILER_ARGS', `TCP $h {instance.relay_port}')dnl",
        "FEATURE(`msp', `[127.0.0.1]')dnl",
        ""])
    (instance.config_dir / "submit.mc").write_text(mc)
    cf = instance.config_dir / "submit.cf"
    cf.write_text(_run(["m4", str(instance.config_dir / "submit.mc")]).stdout)
    return cf


def msp_sendmail(instance, message: bytes, *args: str,
                 timeout: float = 60) -> subprocess.CompletedProcess:
    """Run Sendmail's ``sendmail -C submit.cf ARGS`` (the MSP; built on first
    use) in the instance's namespaces, ``message`` on standard input."""
    cf = instance.config_dir / "submit.cf"
    if not cf.exists():
        build_msp(instance)
    argv = [str(instance.dist.sendmail), "-C", str(cf), "-ODontBlameSendmail=TrustStickyBit", *args]
    proc = subprocess.run(instance._ns_argv(argv), input=message, capture_output=True,
                          timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))
