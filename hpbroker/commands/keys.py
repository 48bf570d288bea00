"""``hpbroker keys generate DIR --name NAME``, ``hpbroker keys show FILE``: CURVE key pairs.

``generate`` writes ``DIR/NAME.key`` (the public certificate: copy it into
a broker's ``security.authorized_keys_dir``, or give it to clients as the
broker's public key) and ``DIR/NAME.key_secret`` (0600: the key pair,
``security.server_secret_key_file`` or a client's
``curve_secret_key_file``), in ZeroMQ's certificate format.  ``show``
prints a certificate's public key (Z85, 40 characters).
"""

from __future__ import annotations

from hpbroker.commands import UserError


def register(sub) -> None:
    p = sub.add_parser("keys", help="generate and show CURVE key pairs (docs/security.md)")
    s = p.add_subparsers(dest="keys_command", metavar="ACTION")
    s.required = True
    g = s.add_parser("generate", help="write DIR/NAME.key (public) and DIR/NAME.key_secret (secret, 0600)")
    g.add_argument("dir", metavar="DIR", help="directory for the two files (made 0700 when missing)")
    g.add_argument("--name", required=True, help="the key's name: the principal a broker knows it by")
    g.add_argument("--force", action="store_true", help="overwrite an existing key pair of that name")
    g.set_defaults(func=_generate)
    sh = s.add_parser("show", help="print the public key (Z85) of a certificate file")
    sh.add_argument("file", metavar="FILE", help="NAME.key or NAME.key_secret")
    sh.set_defaults(func=_show)


def _generate(args) -> int:
    from hpbroker.security.keys import KeyFileError, generate

    try:
        public, secret = generate(args.dir, args.name, force=args.force)
    except KeyFileError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"{args.dir}: {e.strerror}") from None
    print(public)
    print(secret)
    return 0


def _show(args) -> int:
    from hpbroker.security.keys import load_certificate

    try:
        public, _ = load_certificate(args.file)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(public.decode())
    return 0
