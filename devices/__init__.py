"""Device side of cityanchor: keys, readings, signing and publishing.

* :mod:`devices.keystore` generates a device's key pair (Ed25519, or P-256 for secure
  elements) and keeps it on disk: private PEM at mode 0600, public JWK and PEM.
* :mod:`devices.readings` produces plausible, bounded values for every reading kind
  (:data:`KINDS`), for the fleet simulator, the demo and the benchmarks.
* :mod:`devices.signer` signs a device's readings as a chain (seq 1, 2, ...; each ``prev`` is
  the leaf hash of the envelope before) and persists that chain so a seq is never reused.

Example::

    from devices import DeviceSigner, generate_device_key, generate_values, load_private_key

    files = generate_device_key("keys", "aq-nanshan-0001")
    signer = DeviceSigner.open(  # the state is the device's: keys/aq-nanshan-0001.state.json
        "aq-nanshan-0001",
        load_private_key(files.private_pem),
        state_path=device_state_path("keys", "aq-nanshan-0001"),
    )
    envelope = signer.sign("iot.air_quality", generate_values("iot.air_quality", rng, ts_ms=ts))
"""

from devices.keystore import (
    DeviceKeyFiles,
    device_key_files,
    generate_device_key,
    load_private_key,
    load_public_jwk,
    load_public_pem,
)
from devices.readings import FIVEG_KINDS, IOT_KINDS, KINDS, ReadingGenerator, generate_values
from devices.signer import (
    DeviceSigner,
    DeviceState,
    DeviceStateError,
    device_state_path,
    load_state,
    save_state,
)

__all__ = [
    "FIVEG_KINDS",
    "IOT_KINDS",
    "KINDS",
    "DeviceKeyFiles",
    "DeviceSigner",
    "DeviceState",
    "DeviceStateError",
    "ReadingGenerator",
    "device_key_files",
    "device_state_path",
    "generate_device_key",
    "generate_values",
    "load_private_key",
    "load_public_jwk",
    "load_public_pem",
    "load_state",
    "save_state",
]
