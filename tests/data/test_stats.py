"""peftsum data (data/stats.py): the statistics it prints."""




def test_data_command_prints_statistics(demo_dir, capsys):
    from peftsum.cli import main

    assert main(["data", "--preset", "demo", "--data", str(demo_dir), "--set", "data.train_size=50"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "p50/p90/p99" in out and " 160 " in out and "  50 " in out


def test_data_command_counts_the_articles_that_carry_a_daily_mail_byline(tmp_path, capsys):
    import csv

    from peftsum.cli import main

    header = "By . Sam Webb . Follow @@SamWebb . PUBLISHED: . 05:05 EST, 18 December 2013 . "
    for split, bylines in (("train", 3), ("validation", 0), ("test", 2)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "article", "highlights"])
            for i in range(4):
                body = f"A {split} story number {i} was told. It went on. It ended."
                w.writerow([f"{split}{i}", (header if i < bylines else "(CNN) -- ") + body, "A story."])
    assert main(["data", "--preset", "demo", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) > 5 and lines[3].split()[-1] == "byline", out
    counts = {line.split()[0]: int(line.split()[-1]) for line in lines[4:7]}
    assert counts == {"train": 3, "validation": 0, "test": 2}
