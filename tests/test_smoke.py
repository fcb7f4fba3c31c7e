from offswitch import OwnerKey, make_command, verify_command


def test_round_trip(owner_key: OwnerKey) -> None:
    cmd = make_command(owner_key, "acme/chat-1", 2)
    assert verify_command(cmd, owner_key.public_key, "acme/chat-1").slot == 2
