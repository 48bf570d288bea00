"""Transactions, sans-IO: the journal's record format and the coordinator's
table of transactions (docs/transactions.md).  The acceptor drives them
(:mod:`hpbroker.net.transactions`)."""
