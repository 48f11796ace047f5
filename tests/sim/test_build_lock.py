"""Two processes building the same design (parallel test workers, two ``host run --sim``)
take turns: ``sim.verilator.build_lock`` makes the second wait until the first is done."""

import threading

from sim.verilator import build_lock


def test_a_second_holder_of_a_folders_lock_waits_for_the_first(tmp_path):
    folder = tmp_path / "design"
    order = []

    def second():
        with build_lock(folder):
            order.append("second")

    with build_lock(folder):
        assert folder.is_dir() and (folder / ".lock").exists()
        t = threading.Thread(target=second)
        t.start()
        t.join(0.5)
        # flock is per open file, so a thread of the same process waits like a process
        assert t.is_alive() and order == []
        order.append("first")
    t.join(10)
    assert not t.is_alive() and order == ["first", "second"]
    with build_lock(folder):  # released again: a later holder gets it at once
        order.append("third")
    assert order[-1] == "third"
