"""The payout batch workflow kind: one file of withdrawals in, one settlement report out.

``intake`` reads and validates a batch (pure), ``machine`` holds its states, transition table and the
pure decision of what it does next, ``steps`` dispatches and follows its children through the step port,
``report`` builds the settlement report (pure), ``kind`` is the :class:`~engine.kinds.WorkflowKind`
value ``engine.bootstrap`` registers, and ``demo`` the batch ``upbit-withdraw demo`` runs.
"""
