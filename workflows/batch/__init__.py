"""The payout batch workflow kind: one file of withdrawals in, one settlement report out.

``intake`` reads and validates a batch (pure), ``machine`` holds its states, transition table and the
pure decision of what it does next, ``report`` builds the settlement report (pure).
"""
