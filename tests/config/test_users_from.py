"""``users_from`` / ``domains_from``: customers in files of their own,
merged with the main file; errors name the file and line; every error of a
configuration is collected."""

import textwrap
from pathlib import Path

import pytest

from outpost.config import ConfigError, load_config

MAIN = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com]
    domains_from: [domains.d/*.yaml]
    users_from: [users.d/*.yaml]
    users:
      - {name: webfarm, type: ip, ips: [192.0.2.0/28], domains: [example.com]}
    """)


def layout(tmp_path: Path, files: dict[str, str], main: str = MAIN) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (tmp_path / "users.d").mkdir(exist_ok=True)
    (tmp_path / "domains.d").mkdir(exist_ok=True)
    cfg = tmp_path / "outpost.yaml"
    cfg.write_text(main)
    return cfg


def errors_of(cfg: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(str(cfg))
    assert str(exc.value) == exc.value.errors[0]
    return exc.value.errors


def test_several_files_are_merged_in_name_order(tmp_path):
    cfg = layout(tmp_path, {
        "domains.d/b.yaml": "- shop.example\n- {name: blog.example}\n",
        "domains.d/a.yaml": "[example.org]\n",
        "users.d/20-bob.yaml": """\
            - {name: bob, type: login, logins: [bob@shop.example], domains: [shop.example]}
            """,
        "users.d/10-carol.yaml": """\
            - name: carol
              type: login
              logins: [carol@example.org]
              domains: [example.org, blog.example]
            - {name: example.org, type: domain}
            """,
        "users.d/empty.yaml": "",
        "users.d/.30-dave.yaml": "- {name: dave, type: nonsense}\n",     # hidden: a temp file
        "users.d/40-erin.yaml.tmp": "- {name: erin, type: nonsense}\n",   # not .yaml
    })
    config = load_config(str(cfg))
    assert [u.name for u in config.users] == ["webfarm", "carol", "example.org", "bob"]
    assert [d.name for d in config.domains] == ["example.com", "example.org", "shop.example",
                                                "blog.example"]
    assert config.users[1].domains == {"example.org", "blog.example"}
    assert [Path(p).name for p in config.included] == ["a.yaml", "b.yaml", "10-carol.yaml",
                                                       "20-bob.yaml", "empty.yaml"]


def test_main_file_needs_no_users_with_users_from(tmp_path):
    cfg = layout(tmp_path, {"users.d/a.yaml": "- {name: a, type: ip, ips: [10.0.0.1], "
                                              "domains: [example.com]}\n"},
                 main="report_abuse_to: abuse@example.net\ndomains: [example.com]\n"
                      "users_from: [users.d/*.yaml]\n")
    assert [u.name for u in load_config(str(cfg)).users] == ["a"]


def test_an_error_in_a_file_names_that_file_and_line(tmp_path):
    cfg = layout(tmp_path, {"users.d/a.yaml": """\
        - {name: a, type: ip, ips: [10.0.0.1], domains: [example.com]}

        - name: b
          type: ip
          ips: [10.0.0.300]
          domains: [example.com]
        """})
    [error] = errors_of(cfg)
    assert error == (f"{tmp_path}/users.d/a.yaml:5: users[1].ips[0]: '10.0.0.300' "
                     f"is not an IP network")


def test_duplicates_across_files_name_both_places(tmp_path):
    cfg = layout(tmp_path, {
        "users.d/a.yaml": "- {name: bob, type: ip, ips: [10.0.0.1], domains: [example.com]}\n",
        "users.d/b.yaml": "\n- {name: bob, type: ip, ips: [10.0.0.2], domains: [example.com]}\n"
                          "- {name: carl, type: ip, ips: [192.0.2.0/28], domains: [example.com]}\n",
        "domains.d/a.yaml": "- shop.example\n- example.com\n",
    })
    errors = errors_of(cfg)
    a, b, main = tmp_path / "users.d/a.yaml", tmp_path / "users.d/b.yaml", tmp_path / "outpost.yaml"
    assert errors == [
        f"{tmp_path}/domains.d/a.yaml:2: domains[1]: domain 'example.com' is listed twice "
        f"(first at {main}:2)",
        f"{b}:2: users[0].name: duplicate user name 'bob' (first defined at {a}:1)",
        f"{b}:3: users[1].ips[0]: network 192.0.2.0/28 is already listed for user 'webfarm' "
        f"(at {main}:6)",
    ]


def test_every_error_is_listed_not_only_the_first(tmp_path):
    cfg = layout(tmp_path, {"users.d/a.yaml": "- {name: x, type: ip, ips: [bad], domains: [example.com]}\n"},
                 main=MAIN.replace("domains: [example.com]\n", "domains: [example.com]\nlog_levle: x\n", 1)
                 + "  - {name: y, type: login, domains: [example.com]}\n"
                   "connection_limit: 0\nstore: ftp://x\n")
    errors = errors_of(cfg)
    assert len(errors) == 5, errors
    assert "log_levle: unknown key (did you mean 'log_level'?)" in errors[0]
    assert "user 'y' of type login needs 'logins'" in errors[1]
    assert "users.d/a.yaml:1: users[0].ips[0]: 'bad' is not an IP network" in errors[2]
    assert "store: 'ftp://x' is not a store URL" in errors[3]
    assert "connection_limit: 0 is below the minimum 1" in errors[4]


def test_a_missing_file_without_wildcards_is_an_error(tmp_path):
    cfg = layout(tmp_path, {}, main=MAIN.replace("[users.d/*.yaml]", "[customers.yaml]"))
    [error] = errors_of(cfg)
    assert error.endswith(f"users_from[0]: {tmp_path}/customers.yaml: no such file")


def test_a_file_that_is_not_a_list(tmp_path):
    cfg = layout(tmp_path, {"users.d/a.yaml": "name: a\ntype: ip\n"})
    [error] = errors_of(cfg)
    assert error == f"{tmp_path}/users.d/a.yaml:1: users: expected a list, got a mapping"


def test_a_file_named_explicitly_is_read_whatever_its_name(tmp_path):
    cfg = layout(tmp_path, {"customers.yml": "- {name: a, type: ip, ips: [10.0.0.1], "
                                             "domains: [example.com]}\n"},
                 main=MAIN.replace("[users.d/*.yaml]", "[customers.yml, users.d/*.yaml]"))
    assert [u.name for u in load_config(str(cfg)).users] == ["webfarm", "a"]
