"""peftsum data (data/stats.py): the statistics it prints."""




def test_data_command_prints_statistics(demo_dir, capsys):
    from peftsum.cli import main

    assert main(["data", "--preset", "demo", "--data", str(demo_dir), "--set", "data.train_size=50"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "p50/p90/p99" in out and " 160 " in out and "  50 " in out
