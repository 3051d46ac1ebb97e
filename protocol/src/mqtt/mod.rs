//! MQTT codec: rmqtt-codec behind our own model (filled in by the codec work).
