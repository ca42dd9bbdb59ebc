"""Fleet identities: the certificate authority (``ca``), the book of issued identities
(``records``), the broker's access list generated from it (``acl``), and the operations the
``ca`` and ``devices`` commands run (``authority``). README section "Identities"."""
