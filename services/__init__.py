"""jetmedia stage services and the CLI that wires them to the stack."""
