"""Operator tools around the replica daemon (``bft.runtime``): the local cluster launcher, key
generation, the benchmark and its state preloader, the demo, the fault-injection tool
(``bftchat-fault``) and the attack driver. None of them runs inside a replica process."""
